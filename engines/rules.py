"""The rules every backend follows, one copy each: stage timing, tokenizing, the
seeded noise and the start latent, x0 from the model output and the λ rule for retrieved
neighbours (so every backend starts from the same noise and reads the model the same way;
modes are checked once, in ``engines.request.ImageRequest``)."""

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


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Per-image CPU generators, so an image depends only on its own seed: float32 (B,*shape)."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )


def start_latent(noise: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """The model input at the student timestep for an unknown x0: sqrt(1-ᾱ_T)·ε (as diffusers'
    Euler); the one copy (the pipeline, the graph backends, the fast runner, the benches)."""
    return noise * (1 - alpha_bar) ** 0.5


def x0_from_output(
    z: torch.Tensor, model_out: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """The clean latent from the model output at ᾱ (epsilon, v_prediction or sample)."""
    sa, s1a = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (z - s1a * model_out) / sa
    if prediction_type == "v_prediction":
        return sa * z - s1a * model_out
    return model_out


def neighbour_lambda(scores: torch.Tensor, min_score: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The λ rule, the one copy: a neighbour's weight is its cosine score, or 0 when the score
    is under ``min_score`` or not positive (NaN and -inf give 0). Elementwise, any shape;
    ``min_score`` may be a 0-d tensor (the fast runner's captured graphs read it in place).

    Used by the service (``retrieval.compose``), the fast runner's in-graph search, training
    (``training.retriever``, ``training.retriever_db``) and the fp8 feature bench
    (``bench.fp8``); the toy world's eval goes through compose.
    """
    keep = (scores >= min_score) & (scores > 0)
    return torch.where(keep, scores, torch.zeros_like(scores))


def images_to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Decoder sample (B,3,H,W) in about [-1,1] -> uint8 (B,H,W,3) (round half to even)."""
    out = ((img.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1)

