"""Several processes: torchrun with 2 gloo (CPU) processes gives the single-process run.

Per-sample randomness is keyed by the sample's position in the global batch and gradients
are averaged over ranks, so 2 processes x batch 1 must reproduce 1 process x batch 2 up to
floating-point summation order. Also exercises the CLI and a YAML config end to end.
"""

from __future__ import annotations

import copy
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from training.adapter import train
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_match_one(make_config: Any, tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "single", steps=2)
    single = train(copy.deepcopy(cfg))

    cfg_ddp = dict(cfg, output_dir=str(tmp_path / "ddp"), device="cpu")
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg_ddp))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "training", "adapter", "--config", str(cfg_file)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1/2 (gloo)" in proc.stderr or "rank 0/2 (gloo)" in proc.stderr

    a, b = _rows(single.log_csv), _rows(tmp_path / "ddp" / "log.csv")
    assert [r["step"] for r in b] == ["1", "2"]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss_g", "loss_d", "l1", "lpips", "d_real", "d_fake"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-3, abs=1e-5), (ra["step"], key)
    ck_a, ck_b = load_checkpoint(single.checkpoint), load_checkpoint(tmp_path / "ddp")
    assert ck_b["world"] == 2 and len(ck_b["rng"]) == 2
    wa, wb = ck_a["hadapter"]["proj_out.weight"], ck_b["hadapter"]["proj_out.weight"]
    assert (wa - wb).abs().max() < 1e-4 * max(1.0, float(wa.abs().max()) * 10)
