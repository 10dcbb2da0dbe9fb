"""Helpers shared by the torch pipeline and the graph backends: stage timing, tokenizing."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def stage_timer(device: torch.device, timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[key]`` (ms); synchronises CUDA around it."""
    sync = device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if sync:
        torch.cuda.synchronize(device)
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1e3


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device
) -> torch.Tensor:
    """prompts (B) -> int64 token ids (B, max_length), padded and truncated."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device, torch.int64)
