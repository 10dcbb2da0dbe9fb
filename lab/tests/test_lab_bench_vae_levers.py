"""The VAE lever script runs end-to-end on CPU with the tiny config."""

from __future__ import annotations

import json

import torch

from lab.bench import vae_levers


def test_vae_levers_tiny_cpu(tmp_path) -> None:
    res = vae_levers.run("tiny", tmp_path, batches=(1, 2), device_name="cpu", min_time_s=0.01, min_iters=2,
                         profile_reps=2)
    j = json.loads((tmp_path / "vae_levers.json").read_text())
    assert (tmp_path / "vae_levers.md").read_text().startswith("# VAE decoder levers")
    assert set(j["profile"]) == {"1", "2"} and j["profile"]["1"]["conv_groups"]
    levers = {lv["lever"]: lv for lv in res["levers"]}
    assert levers["compile_default"]["status"].startswith("skipped")
    assert levers["subpixel"]["by_batch"]["2"]["diff_vs_eager"]["max_abs"] >= 0
    assert levers["eager"]["by_batch"]["1"]["diff_vs_eager"]["max_abs"] == 0


def test_image_diff_is_computed() -> None:
    a = torch.zeros((1, 4, 4, 3), dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0, 0] = 10
    d = vae_levers.image_diff(a, b)
    assert d["max_abs"] == 10 and d["pct_gt1"] > 0 and d["psnr_db"] != "inf"
