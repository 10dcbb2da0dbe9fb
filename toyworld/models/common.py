"""Shared helpers of the stage training loops: device, autocast, loss logs, tokenizer (the
stages' EMA is ``training.ema.ParamEMA``, their LR schedule ``training.schedule.lambda_lr``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.tokenizer_build import DEFAULT_WORDS, build_clip_tokenizer_files

log = logging.getLogger(__name__)

TOY_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(DEFAULT_WORDS)
        | {"coloured", "beneath", "against", "plain", "showing", "picture", "image", "there"}
        | {"cross", "crosses", "navy", "brown", "gray", "black", "big", "small"}
    )
)
"""Every word of the toy grammar (each one BPE token) plus common glue words."""


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def build_tokenizer(out_dir: str | Path) -> Any:
    """The toy tokenizer (``engines.tokenizer_build`` with ``TOY_WORDS``), loaded."""
    from transformers import CLIPTokenizer

    d = build_clip_tokenizer_files(out_dir, TOY_WORDS)
    return CLIPTokenizer.from_pretrained(str(d), local_files_only=True)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """captions (N) -> input ids (N,77), padded like the pipeline."""
    return tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


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

