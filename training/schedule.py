"""Learning-rate schedules of the training loops: linear warm-up, then constant or cosine.

``lr_factor(...)`` is the multiplier ``torch.optim.lr_scheduler.LambdaLR`` applies at each
step. The cosine decays to ``floor`` over the run's progress: steps done / ``steps``, or the
wall time over ``time_limit_s`` when a time limit ends the run first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch


def lr_factor(
    warmup: int, steps: int = 1, schedule: Literal["constant", "cosine"] = "constant",
    floor: float = 0.0, time_limit_s: float | None = None,
) -> Callable[[int], float]:
    """step -> LR multiplier: ``min(1, (step+1)/warmup)`` times 1 (constant) or
    ``floor + (1 − floor)·½(1 + cos(π·progress))`` (cosine)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be constant or cosine, got {schedule!r}")
    t0 = time.perf_counter()

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if schedule == "constant":
            return w
        p = step / max(steps, 1)
        if time_limit_s:
            p = max(p, (time.perf_counter() - t0) / time_limit_s)
        return w * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    return f


def lambda_lr(opt: torch.optim.Optimizer, warmup: int, steps: int = 1,
              schedule: Literal["constant", "cosine"] = "constant", floor: float = 0.0,
              time_limit_s: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over ``opt`` with :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(warmup, steps, schedule, floor, time_limit_s))
