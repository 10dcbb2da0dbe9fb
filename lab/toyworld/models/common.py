"""Helpers of the lab's stage training loops: image tensors, loss logs, time limits, random
batches (device, autocast and the tokenizer are ``toyworld.models.common``; the stages' EMA is
``training.ema.ParamEMA``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def images_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,H,W) in [-1,1] on ``device``."""
    x = torch.as_tensor(images).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@dataclass
class LossLog:
    """(step, loss) rows of one stage plus its wall time."""

    name: str
    rows: list[tuple[int, float]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    wall_s: float = 0.0
    steps_done: int = 0

    def add(self, step: int, value: float | torch.Tensor, every: int) -> None:
        """Record ``value`` on logged steps only; a tensor is read (a device sync) only then."""
        if step % every == 0 or step == 1:
            v = float(value)
            self.rows.append((step, v))
            log.info("%s step %d loss %.5f (%.0fs)", self.name, step, v, time.perf_counter() - self.t0)

    def finish(self, steps_done: int) -> LossLog:
        self.wall_s = time.perf_counter() - self.t0
        self.steps_done = steps_done
        return self

    def first(self) -> float:
        return self.rows[0][1] if self.rows else float("nan")

    def last(self, n: int = 5) -> float:
        """Mean of the last ``n`` logged losses (less noisy than one value)."""
        vals = [v for _, v in self.rows[-n:]]
        return float(np.mean(vals)) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "steps": self.steps_done,
            "wall_s": round(self.wall_s, 2),
            "first_loss": self.first(),
            "final_loss": self.last(),
            "curve": self.rows,
        }


def out_of_time(t0: float, limit_s: float | None) -> bool:
    return limit_s is not None and time.perf_counter() - t0 > limit_s


def batches(n: int, batch: int, gen: torch.Generator, device: torch.device) -> Iterable[torch.Tensor]:
    """Endless random index batches (B,) over range(n), on ``device``."""
    while True:
        yield torch.randint(0, n, (batch,), generator=gen).to(device)

