"""Issue 13 at micro size on CPU: the data that gives retrieval a job, the UNet layouts, the
side-by-side arms, the swap probe, variant files and the fidelity evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from toyworld.models.configs import get_family


# ---------------------------------------------------------------- data
def test_adapter_split_never_names_a_held_out_rare_pair() -> None:
    from toyworld.models.data import HELD_OUT_RARE, SEEN_RARE, make_split, rare_group

    sp = make_split("adapter", 600, workers=1)
    assert not any(set(s.colour_shape_pairs()) & HELD_OUT_RARE for s in sp.specs)
    # the seen rare pairs are at their natural rate, unlike the skewed train split
    seen = sum(rare_group(s) == "seen_rare" for s in sp.specs)
    train = make_split("train", 600, workers=1)
    assert seen > 3 * max(1, int(train.long_tail.sum()))
    assert len(HELD_OUT_RARE) == 4 and len(SEEN_RARE) == 4


def test_eval_prompts_cover_every_group() -> None:
    from toyworld.models.data import eval_prompts, rare_group
    from toyworld.parse import parse

    p, _ = eval_prompts(20, 40)
    groups = {rare_group(parse(x)) for x in p}
    assert groups == {"common", "seen_rare", "held_out_rare"}


def test_skewed_split_keeps_the_skew_and_never_shows_a_held_out_pair() -> None:
    from toyworld.models.data import HELD_OUT_RARE, make_split

    sk = make_split("skewed", 600, workers=1)
    assert not any(set(s.colour_shape_pairs()) & HELD_OUT_RARE for s in sk.specs)
    nat = make_split("natural", 600, workers=1)
    assert sk.long_tail.mean() < nat.long_tail.mean() / 4  # rare pairs kept with p = 0.03


def test_natural_split_has_rare_pairs_at_the_natural_rate() -> None:
    from toyworld.models.data import make_split

    nat = make_split("natural", 400, workers=1)
    assert nat.long_tail.mean() > 0.15  # 8 of 40 (colour, shape) pairs per object


# ---------------------------------------------------------------- layouts
def _blocks(kind: str) -> tuple[list[bool], bool, list[bool]]:
    from diffusers import UNet2DConditionModel

    u = UNet2DConditionModel(**get_family("tiny", unet_layout=kind).unet_kwargs())
    down = [getattr(b, "has_cross_attention", False) for b in u.down_blocks]
    up = [getattr(b, "has_cross_attention", False) for b in u.up_blocks]
    return down, bool(getattr(u.mid_block, "has_cross_attention", False)), up


def test_unet_layouts_place_cross_attention_as_documented() -> None:
    assert _blocks("xattn") == ([True] * 3, True, [True] * 3)
    assert _blocks("sd") == ([True, True, False], True, [False, True, True])  # none at the H level
    assert _blocks("mid") == ([False] * 3, True, [False] * 3)  # text only reaches H
    with pytest.raises(ValueError, match="unet_layout"):
        get_family("tiny", unet_layout="nope").unet_kwargs()


# ---------------------------------------------------------------- micro model dirs
def _model_dir(root: Path, layout: str) -> Path:
    """A random-weight model dir of the tiny family with the given UNet layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from toyworld.models.common import build_tokenizer
    from toyworld.recipes import export_model_dir

    cfg = get_family("tiny", unet_layout=layout, mid_layers=2 if layout == "mid" else 1)
    work = root / f"w-{layout}"
    torch.manual_seed(0)
    tok = build_tokenizer(work / "text" / "tokenizer")
    te = CLIPTextModel(CLIPTextConfig(**cfg.text_kwargs(len(tok), tok.bos_token_id, tok.eos_token_id)))
    te.save_pretrained(str(work / "text" / "text_encoder"))
    AutoencoderKL(**cfg.vae_kwargs()).save_pretrained(str(work / "vae"))
    UNet2DConditionModel(**cfg.unet_kwargs()).save_pretrained(str(work / "student" / "unet"))
    out = export_model_dir(work, root / f"model-{layout}", cfg)
    meta = json.loads((out / "ragturbo.json").read_text())
    (out / "ragturbo.json").write_text(json.dumps({**meta, "variant": "student"}))
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("fid")
    return {k: _model_dir(root, k) for k in ("mid", "xattn")}


def test_probe_swap_text_is_a_no_op_only_without_decoder_cross_attention(dirs: dict[str, Path]) -> None:
    from toyworld.models.data import eval_prompts
    from toyworld.probe import PROBE_MODES, probe

    prompts, _ = eval_prompts(3, 3)
    res = {k: probe(d, prompts, 1, device="cpu", workers=1) for k, d in dirs.items()}
    for r in res.values():
        assert set(PROBE_MODES) <= set(r["modes"])
        assert r["renders"]["own_vs_own"] > 0.95  # the oracle renders answer their prompts
    mid = res["mid"]["modes"]
    assert mid["swap_text"] == mid["own"]  # the decoder never reads the caption
    assert res["mid"]["layout"]["up"] == ["UpBlock2D"] * 3


@torch.no_grad()
def test_decoder_text_swap_changes_the_output_only_with_cross_attention(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline

    outs = {}
    for k, d in dirs.items():
        p = OneStepPipeline.from_pretrained(d)
        a, b = p.encode_text(["a red circle"]), p.encode_text(["three blue squares"])
        z = p.noisy_input(p.initial_noise([0]))
        t = torch.full((1,), 999)
        h, s, e = p.unet.encode(z, t, a.context)
        outs[k] = (p.unet.decode(h, s, e, b.context) - p.unet.decode(h, s, e, a.context)).abs().max().item()
    assert outs["mid"] == 0.0 and outs["xattn"] > 0.0


def _arm_data(pipe: object, n: int = 8, swap: bool = False) -> object:
    """Random adapter-training rows for the tiny mid model (captions "a red circle"; with
    ``swap`` the swapped captions read "a blue circle")."""
    from toyworld.models.arms import ArmData

    c, hh, ww = pipe.h_shape  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    return ArmData(noise=torch.randn(n, 4, 16, 16, generator=g), target=torch.randn(n, 4, 16, 16, generator=g),
                   context=pipe.encode_text(["a red circle"] * n).context,  # type: ignore[attr-defined]
                   h_nb=torch.randn(n, c, hh, ww, generator=g), lam=torch.full((n,), 0.9),
                   h_self=torch.randn(n, c, hh, ww, generator=g),
                   context_swap=pipe.encode_text(["a blue circle"] * n).context if swap else None)  # type: ignore[attr-defined]


def test_arms_train_side_by_side_and_the_control_stays_retrieval_free(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.models.arms import neighbours_for, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    c, hh, ww = pipe.h_shape
    data = _arm_data(pipe)
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
    from toyworld.models.arms import ArmData, neighbours_for

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


def test_arms_train_on_k_neighbours(dirs: dict[str, Path]) -> None:
    """``extra["train_k"]``: every arm sees the top-k neighbours (leak: the target alone)."""
    from engines.pipeline import OneStepPipeline
    from toyworld.models.arms import ArmData, neighbours_for, train_arms

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


def test_arm_variants_restore_to_model_dirs_and_pack_under_the_size_cap(
        dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tarfile

    from engines.pipeline import OneStepPipeline
    from toyworld import fidelity

    work = tmp_path / "w"
    shutil.copytree(dirs["mid"], work / "model")
    a = OneStepPipeline.from_pretrained(dirs["mid"])
    for i, arm in enumerate(("adapter", "control")):
        with torch.no_grad():
            a.hadapter.proj_out.weight.fill_(0.001 * (i + 1))
        fidelity.save_arm_variant(a.unet.unet, a.hadapter, work / "variants" / f"{arm}.safetensors")
    assert fidelity.restore_arms(work) == ["adapter", "control"]
    assert fidelity.restore_arms(work) == []  # idempotent
    b = OneStepPipeline.from_pretrained(work / "control_model")
    assert torch.allclose(b.hadapter.proj_out.weight, torch.full_like(b.hadapter.proj_out.weight, 0.002), atol=1e-5)
    assert json.loads((work / "control_model" / "ragturbo.json").read_text())["variant"] == "control"
    one = (work / "variants" / "adapter.safetensors").stat().st_size
    monkeypatch.setattr(fidelity, "_TAR_MAX", one + 1)  # room for one file a tar
    fidelity.packer(tmp_path / "out")("arms", work)
    tars = sorted(p.name for p in (tmp_path / "out").glob("variants_*.tar"))
    assert tars == ["variants_0.tar", "variants_1.tar"]
    with tarfile.open(tmp_path / "out" / "variants_1.tar") as t:
        assert t.getnames() == ["variants/control.safetensors"]


def test_variant_file_round_trip(dirs: dict[str, Path], tmp_path: Path) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import apply_variant, save_variant

    a = OneStepPipeline.from_pretrained(dirs["mid"])
    with torch.no_grad():
        for p in a.unet.unet.up_blocks.parameters():
            p.add_(0.01)
        a.hadapter.proj_out.weight.fill_(0.001)
    f = save_variant(a, tmp_path / "v.safetensors")
    b = OneStepPipeline.from_pretrained(dirs["mid"])
    apply_variant(b, f)
    for (k, v), (_, w) in zip(a.unet.unet.state_dict().items(), b.unet.unet.state_dict().items(), strict=True):
        assert torch.allclose(v, w, atol=1e-3), k
    assert torch.allclose(b.hadapter.proj_out.weight, torch.full_like(b.hadapter.proj_out.weight, 0.001), atol=1e-5)


def test_evaluate_reports_modes_groups_and_intervals(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import Suite, evaluate, format_table
    from toyworld.models.data import eval_prompts

    p = OneStepPipeline.from_pretrained(dirs["mid"])
    suite = Suite({"student": p, "adapter": p, "control": p}, None, "test")
    prompts, _ = eval_prompts(3, 5)
    res = evaluate(prompts, suite, seeds_per_prompt=1, n_retrieval=16, batch=8, workers=1, n_boot=200)
    assert set(res["modes"]) == {"student", "inject", "adapter", "adapter_k4", "control", "shuffled_test", "oracle"}
    for r in res["modes"].values():
        assert r["n"] == 8 and {"common", "seen_rare", "held_out_rare", "nb_full", "nb_partial"} <= set(r)
    # the same model in both arms: identical images, a zero difference with a zero-width interval
    same = res["comparisons"]["adapter-control"]["overall"]
    assert same["diff"] == 0.0 and same["lo"] == 0.0 and same["hi"] == 0.0
    assert "held-out-rare" in format_table(res)


def test_paired_bootstrap_interval() -> None:
    from toyworld.scoring import paired_bootstrap, per_prompt

    rng = np.random.default_rng(0)
    a = rng.random(200)
    r = paired_bootstrap(a + 0.1, a, 500)
    assert abs(r["diff"] - 0.1) < 1e-9 and r["lo"] <= 0.1 <= r["hi"]
    noisy = paired_bootstrap(rng.random(200), rng.random(200), 500)
    assert noisy["lo"] < noisy["diff"] < noisy["hi"]
    assert per_prompt([1, 0, 1, 1], 2).tolist() == [0.5, 1.0]


def test_shipped_assets_load_and_stay_small() -> None:
    from toyworld.fideval import ASSETS, Suite

    for f in ASSETS.rglob("*.safetensors"):
        assert f.stat().st_size < 20 * 2**20, f
    suite = Suite.from_shipped(torch.device("cpu"))
    assert {"student", "adapter", "control"} <= set(suite.pipes)
    # the variants share the frozen encoder (one retrieval database serves them all)
    enc = [{k: v for k, v in p.unet.unet.state_dict().items() if k.startswith("down_blocks.")} for p in suite.pipes.values()]
    assert all(all(torch.equal(e[k], enc[0][k]) for k in e) for e in enc[1:])


def test_cli_eval_defaults_to_the_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import toyworld.fideval as fe
    from ragturbo.cli import _register_all, app

    real = fe.evaluate
    seen: dict[str, object] = {}

    def small(prompts, suite, seeds, n_retrieval, modes=None):  # type: ignore[no-untyped-def]
        seen["source"] = suite.source
        return real(prompts, suite, 1, 16, modes=("student", "adapter", "control"), workers=1, n_boot=50)

    monkeypatch.setattr(fe, "evaluate", small)
    f = tmp_path / "prompts.txt"
    f.write_text("a green square\na red triangle\n")
    _register_all()
    out = CliRunner().invoke(app, ["toyworld", "eval", "--prompts", str(f), "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    js = json.loads(out.output[out.output.index("{"):])
    assert set(js["modes"]) == {"student", "adapter", "control"} and js["shipped_variant"] == "adapter"
    assert "assets" in str(seen["source"])


# ---------------------------------------------------------------- swap curriculum
def test_swapped_captions_change_one_attribute_and_never_name_a_held_out_pair() -> None:
    from toyworld.models.data import HELD_OUT_RARE, make_split
    from toyworld.models.swaps import swap_attribute, swapped_captions
    from toyworld.parse import parse

    sp = make_split("adapter", 200, workers=1)
    sw = swapped_captions(sp.captions, 3, HELD_OUT_RARE)
    assert sw == swapped_captions(sp.captions, 3, HELD_OUT_RARE)  # a pure function of the seed
    changed = 0
    for cap, new in zip(sp.captions, sw, strict=True):
        a, b = parse(cap), parse(new)
        assert not set(b.colour_shape_pairs()) & HELD_OUT_RARE
        if new != cap:
            changed += 1
            # exactly one word differs (besides a/an), and it is a colour or a shape
            diff = [(x, y) for x, y in zip(cap.split(), new.split(), strict=True) if x != y and x not in ("a", "an")]
            assert len(diff) == 1
            assert a.colour_shape_pairs() != b.colour_shape_pairs()
            assert a.count == b.count and a.relation == b.relation
    assert changed > 190
    rng = np.random.default_rng(0)
    assert swap_attribute("an orange circle", rng) in {f"a {c} circle" for c in ("red", "green", "blue", "yellow", "purple", "white", "cyan")} | {
        f"an orange {s}" for s in ("square", "triangle", "diamond", "cross")}
    assert swap_attribute("no colour words here", rng) is None


def test_swap_curriculum_feeds_swapped_captions_to_every_arm_but_the_plain_ones(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.models.arms import PLAIN_ARMS, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    with pytest.raises(ValueError, match="context_swap"):
        train_arms(pipe, _arm_data(pipe), ("adapter",), 1, 4, 1e-2, 1e-3, torch.device("cpu"), swap_frac=0.5)
    data = _arm_data(pipe, swap=True)
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


def test_swap_detach_keeps_the_decoder_out_of_the_swapped_rows_gradient(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.models.arms import _decode_split, decoder_params, train_arms

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = _arm_data(pipe, swap=True)
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
        dirs: dict[str, Path], tmp_path: Path) -> None:
    """``init``: an arm starts from an earlier run's variant file; ``decoder_delay``: the
    decoder stays as it started for that fraction of the run while the adapter learns."""
    from engines.pipeline import OneStepPipeline
    from toyworld import fidelity
    from toyworld.models.arms import decoder_params, train_arms
    from toyworld.models.configs import get_family

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    data = _arm_data(pipe)
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


def test_seed_student_takes_an_earlier_runs_student(dirs: dict[str, Path], tmp_path: Path) -> None:
    from toyworld import fidelity
    from toyworld.models.configs import get_family

    cfg = get_family("tiny-mid")
    w = tmp_path / "w"
    fidelity.seed_from_shipped(cfg, w, dirs["mid"] / "unet", dirs["mid"], student_unet=dirs["xattn"] / "unet")
    assert (w / "student" / "unet" / "config.json").read_text() == (dirs["xattn"] / "unet" / "config.json").read_text()
    assert [s for s in fidelity.STAGES if (w / s / "done.json").is_file()] == ["base", "teacher", "skewed", "student"]
    with pytest.raises(FileNotFoundError, match="student UNet"):
        fidelity.seed_from_shipped(cfg, tmp_path / "w2", dirs["mid"] / "unet", dirs["mid"], student_unet=tmp_path / "none")


@pytest.mark.parametrize(("mode", "k"), [("off", 1), ("inject", 1), ("adapter", 1), ("adapter", 4)])
def test_fideval_compose_images_equal_the_direct_path(dirs: dict[str, Path], mode: str, k: int) -> None:
    """The eval's one-step modes go through retrieval.compose: the same images as the direct
    pipeline calls that made the published tables (search, gather, λ by hand)."""
    from engines.pipeline import OneStepPipeline
    from retrieval.compose import TextToImage
    from toyworld.fideval import Database, compose_images

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    torch.manual_seed(3)
    with torch.no_grad():  # a non-zero adapter, so the neighbours change the image
        for prm in pipe.hadapter.proj_out.parameters():
            prm.normal_(0, 0.2)
    db = Database.build(pipe, 24)
    prompts = ["a red circle", "two blue squares", "a small green triangle above a yellow cross"]
    seeds = [0, 1001, 7]
    with torch.no_grad():
        text = pipe.encode_text(prompts)
        lam, idx = db.search(text.pooled, k)
        old = pipe.generate(text, seeds, mode, db.features[idx], lam).images
    new = compose_images(TextToImage(pipe, db.as_retrieval_db(), retrieval_timeout_s=None), prompts, seeds, mode, k)
    assert new.dtype == np.uint8 and new.shape == old.shape
    assert np.array_equal(new, old), np.abs(new.astype(int) - old).max()
    if mode == "adapter":
        plain = compose_images(TextToImage(pipe, db.as_retrieval_db(), retrieval_timeout_s=None), prompts, seeds, "off")
        assert not np.array_equal(new, plain)  # the equality covers the retrieval path


def test_seed_teacher_marks_base_and_teacher_only(dirs: dict[str, Path], tmp_path: Path) -> None:
    """``--seed-teacher``: the given teacher UNet becomes the teacher stage; skewed and student
    are left to train."""
    from toyworld import fidelity
    from toyworld.models.configs import get_family

    cfg = get_family("tiny-mid")
    with pytest.raises(FileNotFoundError, match="config.json"):
        fidelity.seed_teacher(cfg, tmp_path / "bad", tmp_path / "nowhere", dirs["mid"])
    w = tmp_path / "w"
    fidelity.seed_teacher(cfg, w, dirs["mid"] / "unet", dirs["mid"])
    assert (w / "teacher" / "unet" / "config.json").is_file() and (w / "vae").is_dir()
    assert [s for s in fidelity.STAGES if (w / s / "done.json").is_file()] == ["base", "teacher"]


def test_gpu_arms_sweep_trains_once_then_forks_one_process_per_recipe(tmp_path: Path) -> None:
    """``toyworld/gpu_arms_sweep.sh`` with a stand-in for ``python``: one shared run (teacher
    seeded, stages up to export), then one run per recipe in its own copy of the work dir,
    with the shared and the recipe's overrides."""
    import subprocess
    import sys

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import json, pathlib, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[3:]) + '\\n')\n"
        "w = pathlib.Path(sys.argv[3]); w.mkdir(parents=True, exist_ok=True)\n"
        "if '--seed-teacher' in sys.argv: (w / 'mark').write_text('shared')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PY": f"{sys.executable} {fake}", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "w"), "SET": "n_train=8", "ARMS": "adapter,control",
           "RECIPES": "a:swap_frac=0 b:train_k=4"}
    r = subprocess.run(["bash", str(root / "toyworld" / "gpu_arms_sweep.sh")], cwd=root, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    runs = [json.loads(x) for x in calls.read_text().splitlines()]
    shared, recipes = runs[0], sorted(runs[1:])
    assert shared[0] == str(tmp_path / "w" / "shared") and "--seed-teacher" in shared
    assert shared[shared.index("--stages") + 1] == "base,teacher,skewed,student,export"
    assert [x[0] for x in recipes] == [str(tmp_path / "w" / n) for n in ("a", "b")]
    assert [x[x.index("--set") + 1] for x in recipes] == ["n_train=8,swap_frac=0", "n_train=8,train_k=4"]
    for x in recipes:
        assert x[x.index("--arms") + 1] == "adapter,control" and x[x.index("--stages") + 1] == "arms,eval,probe"
        assert (Path(x[0]) / "mark").is_file()  # the recipe's work dir started as a copy of the shared one


def test_bench_arms_reports_steps_per_second_for_each_shape() -> None:
    from toyworld import bench_arms

    rows = bench_arms.run(configs=((1, 2), (2, 2)), seconds=0.5, n=8, device="cpu")
    assert [(r["arms"], r["batch"]) for r in rows] == [(1, 2), (2, 2)]
    for r in rows:
        assert r["steps"] >= 1 and r["steps_per_s"] > 0
        expect = r["steps"] * r["batch"] * r["arms"] / r["wall_s"]
        assert abs(r["arm_samples_per_s"] - expect) <= 0.05 * expect + 1
