"""Step time and peak memory of the training job on random weights of an arch.

``python -m bench.train_speed --arch sd-turbo --batch-size 8 --steps 12`` writes a random
student directory and a random teacher UNet of the arch, a dataset of random images, runs
the job and prints seconds per step (mean of the steps after the first ``warmup``) and
peak GPU memory. Random weights measure speed only, not quality.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

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


def _run(
    arch: Annotated[str, typer.Option(help="tiny or sd-turbo (random weights)")] = "tiny",
    batch_size: Annotated[list[int] | None, typer.Option(help="global batch (repeatable)")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 12,
    warmup: Annotated[int, typer.Option(min=0, help="steps left out of the mean")] = 2,
    grad_ckpt: Annotated[str, typer.Option(help="off, on or both")] = "off",
    root: Annotated[Path | None, typer.Option(help="work folder (default: a temp dir)")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    if grad_ckpt not in ("off", "on", "both"):
        raise typer.BadParameter(f"must be off, on or both; got {grad_ckpt!r}", param_hint="--grad-ckpt")
    sizes = batch_size or [8]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = root or Path(tempfile.mkdtemp(prefix="ragturbo-speed-"))
    fx = make_fixture(work, arch, max(2 * max(sizes), 16))
    modes = {"off": [False], "on": [True], "both": [False, True]}[grad_ckpt]
    rows = []
    for gc in modes:
        for bs in sizes:
            row = measure(arch, bs, steps, warmup, gc, work, fx)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "final"}), flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=(__doc__ or "").splitlines()[0])(_run)
    app(prog_name="python -m bench.train_speed")


if __name__ == "__main__":
    main()
