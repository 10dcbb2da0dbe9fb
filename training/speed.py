"""Step time and peak memory of the training job on random weights of an arch.

``python -m training.speed --arch sd-turbo --batch-size 8 --steps 12`` writes a random
student directory and a random teacher UNet of the arch, a dataset of random images, runs
the job and prints seconds per step (mean of the steps after the first ``warmup``) and
peak GPU memory. Random weights measure speed only, not quality.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def make_fixture(root: Path, arch: str, n_images: int, seed: int = 0) -> dict[str, Path]:
    """Random student dir, random teacher UNet dir and a folder dataset under ``root``."""
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from engines.configs import get_arch
    from engines.random_models import write_model_dir

    student = write_model_dir(root / "student", arch, seed=seed)
    torch.manual_seed(seed + 1)
    UNet2DConditionModel(**get_arch(arch).unet).save_pretrained(str(root / "teacher"))
    res = int(get_arch(arch).ragturbo.get("resolution", 64))
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8)).save(data / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"picture number {i} of {n_images}"}))
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return {"student": student, "teacher": root / "teacher", "data": data}


def measure(
    arch: str, batch_size: int, steps: int, warmup: int, grad_ckpt: bool, root: Path,
    fixture: dict[str, Path] | None = None, k: int = 1,
) -> dict[str, Any]:
    from training.adapter import train

    fx = fixture or make_fixture(root, arch, max(2 * batch_size, 16))
    cfg = {
        "student": str(fx["student"]), "teacher_unet": str(fx["teacher"]),
        "data": {"path": str(fx["data"])}, "output_dir": str(root / f"run-{batch_size}-{grad_ckpt}"),
        "retrieval": {"k": k}, "steps": steps, "batch_size": batch_size, "log_every": 1,
        "ckpt_every": 10**9, "progress": False, "resume": False,
        "gradient_checkpointing": grad_ckpt,
    }
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    import csv

    with res.log_csv.open() as f:
        per = [float(r["sec_per_step"]) for r in csv.DictReader(f)]
    timed = per[warmup:] or per
    return {
        "arch": arch, "batch_size": batch_size, "gradient_checkpointing": grad_ckpt, "k": k,
        "steps": steps, "sec_per_step": float(np.mean(timed)), "sec_per_step_min": float(np.min(timed)),
        "peak_gpu_gib_steps": res.peak_gpu_gib,
        "peak_gpu_gib_incl_setup": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None,
        "wall_s_incl_setup": wall, "final": res.final, "trainable": res.trainable,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--grad-ckpt", choices=["off", "on", "both"], default="off")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="Write the rows as JSON here.")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = a.root or Path(tempfile.mkdtemp(prefix="ragturbo-speed-"))
    fx = make_fixture(root, a.arch, max(2 * max(a.batch_size), 16))
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.grad_ckpt]
    rows = []
    for gc in modes:
        for bs in a.batch_size:
            row = measure(a.arch, bs, a.steps, a.warmup, gc, root, fx)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "final"}), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
