"""Arm-training throughput: steps a second of ``lab.toyworld.arms.train_arms`` for a few
(arms, batch) shapes on random rows, the numbers that size a fidelity run's arm stage.

    python -m lab.toyworld.bench_arms [--model DIR] [--configs 3x256,3x1024,1x256] [--seconds 12]

Random noise, targets, captions and neighbour features of the model's shapes (the loop's cost
does not depend on their values); every arm trains the adapter and the decoder as in a run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from engines.default_model import SHIPPED

ARMS = ("adapter", "control", "shuffled", "leak", "real", "control_plain")
"""``lab.toyworld.arms.ARMS`` in the order a shape of n arms takes them: 3 = the plain recipe."""


def random_rows(pipe: Any, n: int, k: int = 1, seed: int = 0) -> Any:
    from lab.toyworld.arms import ArmData

    c, hh, ww = pipe.h_shape
    s = pipe.latent_size
    g = torch.Generator().manual_seed(seed)
    ctx = pipe.encode_text(["a red circle left of a blue square"]).context.float().cpu()
    dev = pipe.device
    return ArmData(noise=torch.randn(n, 4, s, s, generator=g).to(dev), target=torch.randn(n, 4, s, s, generator=g).to(dev),
                   context=ctx.expand(n, -1, -1).contiguous().to(dev),
                   h_nb=torch.randn(n, k, c, hh, ww, generator=g).to(dev), lam=torch.rand(n, k, generator=g).to(dev),
                   h_self=torch.randn(n, c, hh, ww, generator=g).to(dev))


def run(model: Path = SHIPPED, configs: tuple[tuple[int, int], ...] = ((3, 256),), seconds: float = 12.0,
        n: int = 4096, device: str = "auto") -> list[dict[str, Any]]:
    """-> one row a (arms, batch): steps, wall, steps/s and arm-samples/s (after a short warm-up)."""
    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import train_arms
    from toyworld.models.common import pick_device

    dev = pick_device(device)
    pipe = OneStepPipeline.from_pretrained(model, device=dev)
    data = random_rows(pipe, n)
    rows = []
    for n_arms, bs in configs:
        arms = ARMS[:n_arms]
        train_arms(pipe, data, arms, 3, bs, 3e-4, 3e-5, dev, None, 0, 10**9)  # warm-up (allocator, kernels)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, summ = train_arms(pipe, data, arms, 10**9, bs, 3e-4, 3e-5, dev, seconds, 0, 10**9)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        rows.append({"arms": n_arms, "batch": bs, "steps": summ["steps"], "wall_s": round(wall, 2),
                     "steps_per_s": round(summ["steps"] / wall, 2),
                     "arm_samples_per_s": round(summ["steps"] * bs * n_arms / wall),
                     "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHIPPED)
    ap.add_argument("--configs", default="3x256,3x1024,1x256", help="ARMSxBATCH, comma-separated")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--n", type=int, default=4096, help="random rows on the device")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    cfgs = tuple((int(x.split("x")[0]), int(x.split("x")[1])) for x in a.configs.split(","))
    run(a.model, cfgs, a.seconds, a.n, a.device)


if __name__ == "__main__":
    main()
