"""The pipeline benchmark and the fast runner on the tiny model (CPU; one GPU test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.pipeline import BenchOptions, run_pipeline_bench
from bench.report import format_table
from bench.timing import TimingPolicy

QUICK = TimingPolicy(warmup=1, min_iters=2, max_iters=3, min_time_s=0.0)


@pytest.fixture(scope="module")
def bench_result() -> dict:
    opts = BenchOptions(
        arch="tiny",
        batches=(1, 2),
        variants=("eager", "fast"),
        device="cpu",
        dtype="fp32",
        k=3,
        store_entries=16,
        compile="none",
        parity_batches=(2,),
        policy=QUICK,
    )
    return run_pipeline_bench(opts)


def test_bench_rows_cover_every_variant_and_batch(bench_result: dict) -> None:
    rows = {(r["variant"], r["batch"]): r for r in bench_result["rows"]}
    assert set(rows) == {("diffusers-eager", 1), ("diffusers-eager", 2), ("fast", 1), ("fast", 2)}
    for r in rows.values():
        assert r["e2e_ms"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["e2e_ms"], rel=1e-2)
        assert set(r["stages_ms"]) == {"text", "retrieval", "unet", "vae"}
    assert rows[("diffusers-eager", 1)]["speedup_vs_eager"] == 1.0
    assert rows[("fast", 2)]["retrieval_off_e2e_ms"] > 0
    assert rows[("fast", 2)]["retrieval_overhead_pct"] is not None
    assert rows[("fast", 2)]["stages_ms"]["retrieval"] > 0  # the gather is timed on its own
    assert bench_result["gflop_per_image"]["vae"] > bench_result["gflop_per_image"]["text"] > 0
    json.dumps(bench_result, default=str)  # JSON-ready


def test_bench_fast_images_match_eager(bench_result: dict) -> None:
    p = bench_result["parity"]["fast_vs_eager_b2"]
    assert p["ref_std"] > 1.0  # the reference images are not flat, so the check means something
    assert p["max_abs"] <= 1 and p["frac_gt2"] == 0.0


def test_bench_table_names_card_and_variants(bench_result: dict) -> None:
    t = format_table(bench_result)
    assert "diffusers-eager" in t and "| fast | 2 |" in t and "torch" in t


def test_bench_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        BenchOptions(variants=("eager", "tensorrt-magic"))


def test_bench_cli_writes_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ragturbo.cli import _register_all, app

    _register_all()
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(
        app,
        ["bench", "pipeline", "--arch", "tiny", "--random-weights", "--batch", "1", "--backend", "fast",
         "--device", "cpu", "--dtype", "fp32", "--compile", "none", "--parity-batch", "", "--min-time-s", "0",
         "--min-iters", "1", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["rows"]] == ["fast"]
    assert "| fast | 1 |" in res.output
    bad = CliRunner().invoke(app, ["bench", "pipeline", "--backend", "nope", "--device", "cpu"])
    assert bad.exit_code != 0 and "nope" in bad.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_mode", ["regional", "whole"])
def test_fast_runner_graphs_match_eager_on_gpu(compile_mode: str) -> None:
    opts = BenchOptions(arch="tiny", batches=(1, 3), variants=("eager", "fast"), device="cuda",
                        dtype="fp16", compile=compile_mode, parity_batches=(1, 3), policy=QUICK)
    res = run_pipeline_bench(opts)
    assert not res["errors"], res["errors"]
    assert len(res["parity"]) == 2
    for p in res["parity"].values():
        assert p["frac_gt2"] < 0.01


def test_bench_shows_the_small_decoder_beside_the_full_one() -> None:
    """--decoder full,small: both rows from the same run, the small decoder's FLOPs below the full one's."""
    opts = BenchOptions(arch="tiny", batches=(2,), variants=("eager", "fast"), device="cpu", dtype="fp32",
                        k=2, store_entries=8, compile="none", parity_batches=(2,), policy=QUICK,
                        decoders=("full", "small"), small_variants=("fast",))
    res = run_pipeline_bench(opts)
    names = {(r["variant"], r["batch"]) for r in res["rows"]}
    assert names == {(v, 2) for v in ("diffusers-eager", "fast", "fast+small-vae")}
    assert res["gflop_per_image_small_vae"]["vae"] < res["gflop_per_image"]["vae"] / 2
    assert res["gflop_per_image_small_vae"]["unet"] == res["gflop_per_image"]["unet"]
    # the small rows' parity is against the eager path with the same (small) decoder
    assert res["parity"]["fast+small-vae_vs_eager_b2"]["max_abs"] <= 1
    row = next(r for r in res["rows"] if r["variant"] == "fast+small-vae" and r["batch"] == 2)
    assert row["speedup_vs_eager"] is not None  # against the full-decoder eager row
    assert "| fast+small-vae | 2 |" in format_table(res)
    with pytest.raises(ValueError, match="decoders"):
        BenchOptions(decoders=("medium",))


