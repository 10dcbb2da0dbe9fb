"""Several processes: torchrun with 2 gloo (CPU) processes against the single-process run.

Per-sample randomness is keyed by the sample's position in the global batch, each process
takes batch_size / world of the global batch, and DistributedDataParallel averages the
gradients, so 2 processes x batch 1 must reproduce 1 process x batch 2 up to floating-point
summation order — step after step, and across a change of process count at resume (the
checkpoint holds no per-rank state that the run depends on). Also exercises the CLI and a
YAML config end to end.
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from training.adapter import TrainResult, train
from training.checkpoint import LATEST, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS, RESUME_AT = 12, 6
LOSSES = ("loss_g", "loss_d", "adv_g", "l1", "lpips", "d_real", "d_fake")
# Float summation order differs (per-rank batch 1 vs batch 2, all-reduce of the gradients)
# and the adversarial game amplifies it a little each step: measured over 12 steps and the
# seven logged losses, max |diff| 1e-5 (relative 1e-3 on d_real, a value near 0.01); log.csv
# keeps 6 significant digits. The bounds leave room for another BLAS (docs/training.md).
REL, ABS = 2e-3, 5e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(path: Path) -> dict[int, dict[str, float]]:
    with path.open() as f:
        return {int(r["step"]): {k: float(r[k]) for k in LOSSES} for r in csv.DictReader(f)}


def _torchrun(cfg: dict[str, Any], tmp: Path, name: str) -> subprocess.CompletedProcess[str]:
    cfg_file = tmp / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "training", "adapter", "--config", str(cfg_file)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_close(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], steps: range) -> None:
    assert sorted(got) == list(steps)
    for step in steps:
        for key in LOSSES:
            assert got[step][key] == pytest.approx(want[step][key], rel=REL, abs=ABS), (step, key)


def _start_from(ckpt: Path, out: Path) -> None:
    """A run directory whose latest.pt is ``ckpt`` (what an interrupted run leaves)."""
    out.mkdir(parents=True)
    shutil.copy(ckpt, out / LATEST)


@pytest.fixture(scope="module")
def runs(make_config: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process and two gloo processes, 12 steps each from the same seed, every
    checkpoint kept: the reference curves and the checkpoints the resume tests start from."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = make_config(tmp / "single", steps=STEPS)
    cfg.update(keep_checkpoints=STEPS, ema_decay=0.9)
    single = train(copy.deepcopy(cfg))
    proc = _torchrun(dict(cfg, output_dir=str(tmp / "ddp")), tmp, "ddp")
    return {"cfg": cfg, "tmp": tmp, "single": single, "ddp": tmp / "ddp", "stderr": proc.stderr}


def test_two_gloo_processes_match_one(runs: dict[str, Any]) -> None:
    single: TrainResult = runs["single"]
    assert "rank 1/2 (gloo)" in runs["stderr"] or "rank 0/2 (gloo)" in runs["stderr"]
    _assert_close(_rows(runs["ddp"] / "log.csv"), _rows(single.log_csv), range(1, STEPS + 1))
    ck_a, ck_b = load_checkpoint(single.checkpoint), load_checkpoint(runs["ddp"])
    assert ck_b["world"] == 2 and len(ck_b["rng"]) == 2 and ck_a["world"] == 1
    assert int(ck_b["config"]["batch_size"]) == int(ck_a["config"]["batch_size"]) == 2  # global batch
    for part in ("hadapter", "lora", "heads", "ema"):
        for k, wa in ck_a[part].items():
            wb = ck_b[part][k]
            assert (wa - wb).abs().max() <= 1e-3 * max(1.0, float(wa.abs().max())), (part, k)
    # the weights moved, so the match above is not between two untrained models; and
    # without DDP's all-reduce rank 0 would step on its half batch alone and part from them
    assert ck_a["hadapter"]["proj_out.weight"].abs().max() > 1e-4


def test_checkpoint_of_two_processes_resumes_in_one(runs: dict[str, Any]) -> None:
    out = runs["tmp"] / "ddp-to-single"
    _start_from(runs["ddp"] / f"step-{RESUME_AT:07d}.pt", out)
    res = train(dict(copy.deepcopy(runs["cfg"]), output_dir=str(out)))
    _assert_close(_rows(res.log_csv), _rows(runs["single"].log_csv), range(RESUME_AT + 1, STEPS + 1))
    ck = load_checkpoint(res.checkpoint)
    assert ck["world"] == 1 and ck["step"] == STEPS


def test_checkpoint_of_one_process_resumes_in_two(runs: dict[str, Any]) -> None:
    out = runs["tmp"] / "single-to-ddp"
    _start_from(runs["single"].output_dir / f"step-{RESUME_AT:07d}.pt", out)
    proc = _torchrun(dict(runs["cfg"], output_dir=str(out)), runs["tmp"], "resume")
    assert "checkpoint has RNG states of 1 ranks, running 2" in proc.stderr
    _assert_close(_rows(out / "log.csv"), _rows(runs["single"].log_csv), range(RESUME_AT + 1, STEPS + 1))
    ck = load_checkpoint(out)
    assert ck["world"] == 2 and ck["step"] == STEPS
    ref = load_checkpoint(runs["single"].checkpoint)
    for k, w in ref["ema"].items():
        assert torch.allclose(ck["ema"][k], w, rtol=1e-3, atol=1e-5), k
