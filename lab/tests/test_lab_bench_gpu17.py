"""The issue-17 GPU driver (lab/bench/gpu17.py) runs end to end on CPU with the tiny arch:
fast with the full and the small decoder in one process, JSON + markdown written, skips and
CUDA-only parts recorded rather than silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.bench import gpu17


def test_gpu17_tiny_cpu(tmp_path: Path) -> None:
    res = gpu17.run(tmp_path, arch="tiny", order="fast:1,small:1,small:2,peer:2", budget_s=600,
                    device_name="cpu", dtype_name="fp32", k=2, min_time_s=0.0, min_iters=2)
    j = json.loads((tmp_path / "gpu17.json").read_text())
    md = (tmp_path / "gpu17.md").read_text()
    names = {(r["variant"], r["batch"]) for r in j["rows"]}
    assert names == {("fast", 1), ("fast+small-vae", 1), ("fast+small-vae", 2)}
    assert j["gflop_per_image_small_vae"]["vae"] < j["gflop_per_image"]["vae"] / 2
    assert j["parity"]["fast_vs_eager_b1"]["max_abs"] <= 1
    assert j["parity"]["fast+small-vae_vs_eager_b1"]["max_abs"] <= 1
    assert any(s.startswith("peer:2") for s in j["skipped"])  # CUDA only, said so
    assert j["fp8_unet"]["status"].startswith("skipped")  # CUDA only, said so
    assert "| fast+small-vae | 2 |" in md and "fp8" in md
    assert res["wall_s"] > 0 and not j["errors"]


def test_gpu17_budget_skips_are_listed(tmp_path: Path) -> None:
    res = gpu17.run(tmp_path, arch="tiny", order="fast:1,small:1", budget_s=0.0, device_name="cpu",
                    dtype_name="fp32", k=1, min_time_s=0.0, min_iters=2, fp8=False)
    assert res["rows"] == [] and len(res["skipped"]) == 2
    assert all("left" in s for s in res["skipped"])


def test_gpu17_order_is_validated() -> None:
    with pytest.raises(ValueError, match="RUN:BATCH"):
        gpu17.parse_order("fast:1,medium:4")
