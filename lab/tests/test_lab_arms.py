"""Issue 13's arm stage at micro size on CPU: arms side by side, their neighbours (k, leak,
shuffled), the swap curriculum, resuming and the decoder delay, and the arm-loop benchmark."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def test_arms_train_side_by_side_and_the_control_stays_retrieval_free(dirs: dict[str, Path], arm_data: Callable[..., Any]) -> None:
    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import neighbours_for, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    c, hh, ww = pipe.h_shape
    data = arm_data(pipe)
    idx = torch.arange(4)
    h_l, lam_l = neighbours_for("leak", data, idx)
    assert torch.equal(h_l[:, 0], data.h_self[idx]) and torch.all(lam_l == 1)
    h_s, _ = neighbours_for("shuffled", data, idx)
    assert torch.equal(h_s[1, 0], data.h_nb[0, 0])
    arms, summ = train_arms(pipe, data, ("adapter", "control"), 3, 4, 1e-2, 1e-3, torch.device("cpu"), log_every=1)
    assert summ["steps"] == 3
    h = torch.randn(2, c, hh, ww)
    hr = torch.randn(2, 1, c, hh, ww)
    lam = torch.full((2, 1), 0.9)
    # the control never saw a neighbour, so its adapter is still the identity
    assert torch.equal(arms["control"].hadapter(h, hr, lam), h)
    assert not torch.equal(arms["adapter"].hadapter(h, hr, lam), h)
    # the encoder (retrieval features) is untouched in every arm
    for a in arms.values():
        for (k, v), (_, w) in zip(a.unet.unet.state_dict().items(), pipe.unet.unet.state_dict().items(), strict=True):
            if k.startswith(("down_blocks.", "mid_block.")):
                assert torch.equal(v, w), k


def test_leak_curriculum_swaps_only_the_adapter_arms_marked_rows() -> None:
    from lab.toyworld.arms import ArmData, neighbours_for

    g = torch.Generator().manual_seed(1)
    n = 6
    data = ArmData(noise=torch.randn(n, 4, 8, 8, generator=g), target=torch.randn(n, 4, 8, 8, generator=g),
                   context=torch.randn(n, 5, 8, generator=g), h_nb=torch.randn(n, 8, 2, 2, generator=g),
                   lam=torch.linspace(0.2, 0.9, n), h_self=torch.randn(n, 8, 2, 2, generator=g))
    idx = torch.tensor([0, 2, 4, 5])
    leak = torch.tensor([True, False, True, False])
    h, lam = neighbours_for("adapter", data, idx, leak)
    assert torch.equal(h[0, 0], data.h_self[0]) and torch.equal(h[2, 0], data.h_self[4])
    assert torch.equal(h[1, 0], data.h_nb[2, 0]) and torch.equal(h[3, 0], data.h_nb[5, 0])
    assert torch.equal(lam, data.lam[idx])  # λ stays the real neighbour's: no tell
    h_r, _ = neighbours_for("real", data, idx, leak)
    assert torch.equal(h_r, data.h_nb[idx])  # the real-only arm ignores the curriculum


def test_shuffle_curriculum_gives_only_the_adapter_arms_marked_rows_another_rows_neighbour() -> None:
    from lab.toyworld.arms import ArmData, neighbours_for

    g = torch.Generator().manual_seed(2)
    n = 6
    data = ArmData(noise=torch.randn(n, 4, 8, 8, generator=g), target=torch.randn(n, 4, 8, 8, generator=g),
                   context=torch.randn(n, 5, 8, generator=g), h_nb=torch.randn(n, 2, 8, 2, 2, generator=g),
                   lam=torch.rand(n, 2, generator=g), h_self=None)
    idx = torch.tensor([0, 2, 4, 5])
    shuffle = torch.tensor([True, False, True, False])
    h, lam = neighbours_for("adapter", data, idx, None, shuffle)
    assert torch.equal(h[0], data.h_nb[5]) and torch.equal(h[2], data.h_nb[2])  # the batch rolled by one
    assert torch.equal(h[1], data.h_nb[2]) and torch.equal(h[3], data.h_nb[5])
    assert torch.equal(lam, data.lam[idx])  # each row keeps its own λ: no tell
    for arm in ("real", "shuffled"):
        h_r, _ = neighbours_for(arm, data, idx, None, shuffle)
        assert torch.equal(h_r, neighbours_for(arm, data, idx)[0])  # the curriculum is the adapter arm's


def test_arms_train_on_k_neighbours(dirs: dict[str, Path]) -> None:
    """``extra["train_k"]``: every arm sees the top-k neighbours (leak: the target alone)."""
    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import ArmData, neighbours_for, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    c, hh, ww = pipe.h_shape
    g = torch.Generator().manual_seed(2)
    n, k = 6, 3
    data = ArmData(noise=torch.randn(n, 4, 16, 16, generator=g), target=torch.randn(n, 4, 16, 16, generator=g),
                   context=pipe.encode_text(["a red circle"] * n).context,
                   h_nb=torch.randn(n, k, c, hh, ww, generator=g), lam=torch.rand(n, k, generator=g),
                   h_self=torch.randn(n, c, hh, ww, generator=g))
    assert data.k == k
    idx = torch.tensor([0, 3])
    h, lam = neighbours_for("adapter", data, idx)
    assert h.shape == (2, k, c, hh, ww) and torch.equal(lam, data.lam[idx])
    h0, lam0 = neighbours_for("control", data, idx)
    assert h0.shape == h.shape and not lam0.any()
    hl, laml = neighbours_for("leak", data, idx)
    assert hl.shape == (2, 1, c, hh, ww) and torch.all(laml == 1)
    with pytest.raises(ValueError, match="lam"):
        ArmData(noise=data.noise, target=data.target, context=data.context, h_nb=data.h_nb,
                lam=data.lam[:, :1], h_self=data.h_self)
    arms, summ = train_arms(pipe, data, ("adapter", "control", "shuffled"), 2, 4, 1e-2, 1e-3,
                            torch.device("cpu"), log_every=1)
    assert summ["steps"] == 2
    probe = torch.randn(2, c, hh, ww)
    assert torch.equal(arms["control"].hadapter(probe, h, lam), probe)
    assert not torch.equal(arms["adapter"].hadapter(probe, h, lam), probe)


def test_swap_curriculum_feeds_swapped_captions_to_every_arm_but_the_plain_ones(dirs: dict[str, Path], arm_data: Callable[..., Any]) -> None:
    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import PLAIN_ARMS, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    with pytest.raises(ValueError, match="context_swap"):
        train_arms(pipe, arm_data(pipe), ("adapter",), 1, 4, 1e-2, 1e-3, torch.device("cpu"), swap_frac=0.5)
    data = arm_data(pipe, swap=True)
    base = pipe.unet
    orig = base.encode
    calls: list[torch.Tensor] = []
    base.encode = lambda z, t, ctx: (calls.append(ctx.clone()), orig(z, t, ctx))[1]  # type: ignore[method-assign]
    try:
        _arms, summ = train_arms(pipe, data, ("adapter", "control_plain"), 2, 8, 1e-2, 1e-3, torch.device("cpu"),
                                swap_frac=1.0)
    finally:
        base.encode = orig  # type: ignore[method-assign]
    assert summ["swap_frac"] == 1.0 and "control_plain" in PLAIN_ARMS
    # per step: one pass with the swapped captions (swap_frac = 1: every row) and one plain pass
    assert len(calls) == 4
    assert torch.allclose(calls[0], data.context_swap[:1].expand_as(calls[0]))
    assert torch.allclose(calls[1], data.context[:1].expand_as(calls[1]))


def test_swap_detach_keeps_the_decoder_out_of_the_swapped_rows_gradient(dirs: dict[str, Path], arm_data: Callable[..., Any]) -> None:
    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import _decode_split, decoder_params, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = arm_data(pipe, swap=True)
    g = torch.Generator().manual_seed(1)
    # the split decode computes what the plain decode computes
    z = torch.randn(4, 4, 16, 16, generator=g)
    rows = torch.tensor([True, False, True, False])
    with torch.no_grad():
        h, skips, temb = pipe.unet.encode(z, torch.full((4,), 999), data.context[:4].clone())
        split = _decode_split(pipe.unet, h, skips, temb, data.context[:4].clone(), rows)
        plain = pipe.unet.decode(h, skips, temb, data.context[:4].clone()).float()
    assert torch.allclose(split, plain, atol=1e-6)
    before = [p.detach().clone() for p in decoder_params(pipe.unet.unet)]
    moved = {}
    for detach in (True, False):
        arms, _ = train_arms(pipe, data, ("adapter",), 2, 8, 1e-2, 1e-2, torch.device("cpu"),
                             swap_frac=1.0, swap_detach_decoder=detach)
        after = decoder_params(arms["adapter"].unet.unet)
        moved[detach] = max((a - b).abs().max().item() for a, b in zip(after, before, strict=True))
        # the zero-initialised output projection learned: the swapped rows' gradient reaches the adapter
        assert arms["adapter"].hadapter.proj_out.weight.abs().sum() > 0
    assert moved[True] == 0.0  # every row swapped: the decoder learns nothing
    assert moved[False] > 0.0


def test_arms_resume_from_variants_and_the_decoder_delay_freezes_only_the_decoder(
        dirs: dict[str, Path], tmp_path: Path, arm_data: Callable[..., Any]) -> None:
    """``init``: an arm starts from an earlier run's variant file; ``decoder_delay``: the
    decoder stays as it started for that fraction of the run while the adapter learns."""
    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity
    from lab.toyworld.arms import decoder_params, train_arms
    from toyworld.models.configs import get_family

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = arm_data(pipe)
    dev = torch.device("cpu")
    first, _ = train_arms(pipe, data, ("adapter",), 2, 4, 1e-2, 1e-2, dev)
    var = fidelity.save_arm_variant(first["adapter"].unet.unet, first["adapter"].hadapter, tmp_path / "adapter.safetensors")
    start = [p.detach().clone() for p in decoder_params(first["adapter"].unet.unet)]
    student = [p.detach().clone() for p in decoder_params(pipe.unet.unet)]
    # the whole run delayed: the decoder is the variant's (fp16-rounded), the adapter moved on
    arms, summ = train_arms(pipe, data, ("adapter",), 2, 4, 1e-2, 1e-2, dev, init={"adapter": var}, decoder_delay=1.0)
    got = decoder_params(arms["adapter"].unet.unet)
    assert max((a - b).abs().max().item() for a, b in zip(got, start, strict=True)) < 1e-2
    assert max((a - b).abs().max().item() for a, b in zip(got, student, strict=True)) > 1e-2
    w0 = first["adapter"].hadapter.proj_out.weight
    assert not torch.allclose(arms["adapter"].hadapter.proj_out.weight, w0.half().float(), atol=1e-4)
    assert summ["decoder_from_step"] is None and summ["init"] == {"adapter": str(var)}
    # half the run delayed: the decoder learns from the second of two steps on
    arms, summ = train_arms(pipe, data, ("adapter",), 2, 4, 1e-2, 1e-2, dev, decoder_delay=0.5)
    got = decoder_params(arms["adapter"].unet.unet)
    assert summ["decoder_from_step"] == 2
    assert max((a - b).abs().max().item() for a, b in zip(got, student, strict=True)) > 0
    # --arm-init names a dir; an arm without its file there is an error, not a fresh start
    cfg = get_family("tiny-mid")
    cfg.extra["arm_init"] = str(tmp_path)
    assert fidelity.arm_init(cfg, ("adapter",)) == {"adapter": var}
    with pytest.raises(FileNotFoundError, match="control"):
        fidelity.arm_init(cfg, ("adapter", "control"))


def test_bench_arms_reports_steps_per_second_for_each_shape() -> None:
    from lab.toyworld import bench_arms

    rows = bench_arms.run(configs=((1, 2), (2, 2)), seconds=0.5, n=8, device="cpu")
    assert [(r["arms"], r["batch"]) for r in rows] == [(1, 2), (2, 2)]
    for r in rows:
        assert r["steps"] >= 1 and r["steps_per_s"] > 0
        expect = r["steps"] * r["batch"] * r["arms"] / r["wall_s"]
        assert abs(r["arm_samples_per_s"] - expect) <= 0.05 * expect + 1



def test_arms_checkpoint_on_a_timer_and_the_files_resume(dirs: dict[str, Path], tmp_path: Path,
                                                         arm_data: Callable[..., Any]) -> None:
    """``checkpoint`` is called every ``checkpoint_every_s`` with the step and the live arms, so
    a run cut off mid-way keeps what it learned; a file it writes resumes as ``init``."""
    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity
    from lab.toyworld.arms import decoder_params, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = arm_data(pipe)
    calls: list[tuple[int, tuple[str, ...]]] = []

    def ckpt(step: int, arms: dict[str, Any]) -> None:
        calls.append((step, tuple(arms)))
        for a, arm in arms.items():
            fidelity.save_arm_variant(arm.unet.unet, arm.hadapter, tmp_path / f"{a}.safetensors")

    arms, _ = train_arms(pipe, data, ("adapter", "control"), 3, 4, 1e-2, 1e-2, torch.device("cpu"),
                         checkpoint=ckpt, checkpoint_every_s=1e-9)
    assert calls == [(1, ("adapter", "control")), (2, ("adapter", "control")), (3, ("adapter", "control"))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "control.safetensors"]
    resumed, _ = train_arms(pipe, data, ("adapter",), 0, 4, 1e-2, 1e-2, torch.device("cpu"),
                            init={"adapter": tmp_path / "adapter.safetensors"})
    for a, b in zip(decoder_params(resumed["adapter"].unet.unet), decoder_params(arms["adapter"].unet.unet), strict=True):
        assert torch.allclose(a, b, atol=1e-2)
    calls.clear()
    train_arms(pipe, data, ("adapter",), 2, 4, 1e-2, 1e-2, torch.device("cpu"), checkpoint=ckpt)  # off by default
    assert calls == []


def test_arm_rows_without_the_targets_own_h_serve_every_arm_but_leak(dirs: dict[str, Path], arm_data: Callable[..., Any]) -> None:
    """The arm stage computes ``h_self`` only when the leak arm or the leak curriculum reads it;
    without it the other arms train, and a leak arm is refused before any step."""
    import dataclasses

    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = dataclasses.replace(arm_data(pipe), h_self=None)
    _, summ = train_arms(pipe, data, ("adapter", "control", "shuffled"), 1, 4, 1e-2, 1e-3, torch.device("cpu"))
    assert summ["steps"] == 1
    for arms, leak_frac in ((("leak",), 0.0), (("adapter",), 0.5)):
        with pytest.raises(ValueError, match="h_self"):
            train_arms(pipe, data, arms, 1, 4, 1e-2, 1e-3, torch.device("cpu"), leak_frac=leak_frac)


def test_a_gated_adapter_resumes_from_a_gateless_variant_and_learns_its_gate(
        dirs: dict[str, Path], tmp_path: Path, arm_data: Callable[..., Any]) -> None:
    """``--set query_gate=1,shuffle_frac=F`` (the eighth run): the family's adapter gets the
    query gate, an earlier run's gate-less variant loads into it at g = 0 (the same function),
    and training with the shuffle curriculum opens the gate."""
    from engines.hadapter import HAdapter
    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity
    from lab.toyworld.arms import train_arms
    from toyworld.fideval import load_variant
    from toyworld.models.configs import get_family

    cfg = get_family("tiny-mid")
    assert "query_gate" not in cfg.adapter_kwargs()
    cfg.extra["query_gate"] = 1
    assert cfg.adapter_kwargs()["query_gate"] is True
    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = arm_data(pipe)
    dev = torch.device("cpu")
    first, _ = train_arms(pipe, data, ("adapter",), 2, 4, 1e-2, 1e-2, dev)
    var = fidelity.save_arm_variant(first["adapter"].unet.unet, first["adapter"].hadapter, tmp_path / "adapter.safetensors")
    old = first["adapter"].hadapter
    pipe.hadapter = HAdapter(**{**dict(old.config), "query_gate": True})
    probe = HAdapter(**dict(pipe.hadapter.config)).eval()
    load_variant(pipe.unet.unet, probe, var)
    c, hh, ww = pipe.h_shape
    h, r, lam = torch.randn(2, c, hh, ww), torch.randn(2, 1, c, hh, ww), torch.full((2, 1), 0.8)
    with torch.no_grad():
        assert torch.allclose(probe(h, r, lam), old.half().float()(h, r, lam), atol=1e-5)
    arms, summ = train_arms(pipe, data, ("adapter",), 2, 4, 1e-2, 1e-2, dev, init={"adapter": var}, shuffle_frac=0.5)
    assert summ["shuffle_frac"] == 0.5
    assert arms["adapter"].hadapter.q_gate.abs().max().item() > 0
    with pytest.raises(RuntimeError, match="q_gate"):  # a gated file into a gate-less adapter
        g = fidelity.save_arm_variant(arms["adapter"].unet.unet, arms["adapter"].hadapter, tmp_path / "g.safetensors")
        load_variant(pipe.unet.unet, HAdapter(**dict(old.config)), g)


def test_a_gated_arm_restores_onto_a_gateless_base_model(
        dirs: dict[str, Path], tmp_path: Path, arm_data: Callable[..., Any]) -> None:
    """The eighth GPU run sent back gated variant files for a work dir whose ``model`` (the
    student) has a gate-less adapter: ``restore_arms`` (through ``apply_variant``) gives the
    rebuilt arm a gated adapter with the file's gate, and the rebuilt pipe's adapter computes
    what the trained one did; a gate-less file keeps a gate-less adapter."""
    import shutil

    from engines.hadapter import HAdapter
    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity
    from lab.toyworld.arms import train_arms

    work = tmp_path / "w"
    shutil.copytree(dirs["mid"], work / "model")
    pipe = OneStepPipeline.from_pretrained(work / "model")
    assert pipe.hadapter.q_gate is None
    plain = pipe.hadapter
    pipe.hadapter = HAdapter(**{**dict(plain.config), "query_gate": True})
    arms, _ = train_arms(pipe, arm_data(pipe), ("adapter",), 3, 4, 1e-2, 1e-2, torch.device("cpu"), shuffle_frac=0.5)
    trained = arms["adapter"].hadapter
    assert trained.q_gate.abs().max().item() > 0
    fidelity.save_arm_variant(arms["adapter"].unet.unet, trained, work / "variants" / "adapter.safetensors")
    pipe.hadapter = plain
    control, _ = train_arms(pipe, arm_data(pipe), ("control",), 1, 4, 1e-2, 1e-2, torch.device("cpu"))
    fidelity.save_arm_variant(control["control"].unet.unet, control["control"].hadapter, work / "variants" / "control.safetensors")
    assert fidelity.restore_arms(work) == ["adapter", "control"]
    back = OneStepPipeline.from_pretrained(work / "adapter_model")
    assert back.hadapter.config.query_gate
    assert torch.allclose(back.hadapter.q_gate.float(), trained.q_gate.half().float())
    c, hh, ww = pipe.h_shape
    h, r, lam = torch.randn(2, c, hh, ww), torch.randn(2, 1, c, hh, ww), torch.full((2, 1), 0.8)
    with torch.no_grad():
        want = trained.half().float()(h, r, lam)
        assert torch.allclose(back.hadapter.float()(h, r, lam), want, atol=1e-4)
    assert not OneStepPipeline.from_pretrained(work / "control_model").hadapter.config.query_gate
