"""Learning-rate schedule of the training loops: linear warm-up, then constant or cosine.

The cosine decays to ``floor`` over the run's progress: steps done / ``steps``, or the wall
time over ``time_limit_s`` when a time limit ends the run first.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch


def lambda_lr(opt: torch.optim.Optimizer, warmup: int, steps: int = 1,
              schedule: Literal["constant", "cosine"] = "constant", floor: float = 0.0,
              time_limit_s: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with ``min(1, (step+1)/warmup)`` times 1 (constant) or
    ``floor + (1 − floor)·½(1 + cos(π·progress))`` (cosine)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be constant or cosine, got {schedule!r}")
    t0 = time.perf_counter()

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if schedule == "constant":
            return w
        p = max(step / max(steps, 1), (time.perf_counter() - t0) / time_limit_s if time_limit_s else 0.0)
        return w * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)
