"""Toy world at micro size on CPU: the data that gives retrieval a job, the UNet layouts,
variant files and the fidelity evaluation. The arm stage's tests: ``lab/tests/test_lab_arms.py``;
shared fixtures: ``conftest.py``; the lab's drivers: lab/tests/test_lab_toyworld.py."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------- probe, variants, eval (micro model dirs: conftest.py)


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
    with pytest.raises(ValueError, match="unknown eval mode"):
        evaluate(prompts, suite, seeds_per_prompt=1, n_retrieval=16, modes=("adapter", "leak"))


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
    bad = CliRunner().invoke(app, ["toyworld", "eval", "--prompts", str(f), "--modes", "adapter,leak"])
    assert bad.exit_code == 2 and "unknown mode" in bad.output and "leak" in bad.output


# ---------------------------------------------------------------- recipe drivers


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
