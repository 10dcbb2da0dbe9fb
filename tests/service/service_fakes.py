"""Test doubles and helpers for the service tests.

``FakeT2I`` is a fast deterministic stand-in for ``retrieval.compose.TextToImage`` with
knobs for batch time, retrieval outage and failures; ``real_factory`` is the real one.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FakeNeighbour:
    id: str
    caption: str
    score: float
    weight: float = 0.0

    @property
    def used(self) -> bool:
        return self.weight > 0


@dataclass
class FakeResult:
    image: np.ndarray
    seed: int
    retrieved: list[Any]
    retrieval_status: str
    unknown_words: list[str] | None = None


@dataclass
class FakeT2I:
    """Image = a colour from sha256(prompt, seed, mode, k); every batch sleeps ``batch_s``."""

    batch_s: float = 0.0
    retrieval_down: bool = False
    fail_on: str | None = None
    break_on: str | None = None  # after this prompt every call raises (a dead GPU)
    broken: bool = False
    model_name: str = "fake-model"
    backend_name: str = "torch"
    resolution: int = 16
    noise: bool = False  # incompressible images (large responses) instead of one colour
    min_score: float = 0.5
    vocabulary: set[str] | None = None  # None: the model declares none (unknown_words null)
    batches: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(self, reqs: Sequence[Any]) -> tuple[list[Any], dict[str, float]]:
        with self.lock:
            self.batches.append(len(reqs))
        if self.break_on is not None and any(r.prompt == self.break_on for r in reqs):
            self.broken = True
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        t0 = time.perf_counter()
        if self.batch_s:
            time.sleep(self.batch_s)
        out = []
        for r in reqs:
            if self.fail_on is not None and r.prompt == self.fail_on:
                raise RuntimeError("/secret/path/model.bin exploded")
            h = hashlib.sha256(f"{r.prompt}|{r.seed}|{r.mode}|{r.k}".encode()).digest()
            img = np.empty((self.resolution, self.resolution, 3), np.uint8)
            img[...] = np.frombuffer(h[:3], np.uint8)
            if self.noise:
                img = np.random.default_rng(list(h[:8])).integers(0, 256, img.shape, np.uint8)
            if r.mode == "off":
                out.append(FakeResult(img, r.seed, [], "off"))
            elif self.retrieval_down:
                out.append(FakeResult(img, r.seed, [], "unavailable"))
            else:
                # "weak" in the prompt: every neighbour below min_score (λ 0, none used)
                weak = "weak" in r.prompt
                nbs = [FakeNeighbour(f"id{i}", f"caption {i}", 0.9 - 0.1 * i, 0.0 if weak else 0.9 - 0.1 * i)
                       for i in range(r.k)]
                unknown = None if self.vocabulary is None else [w for w in r.prompt.split() if w not in self.vocabulary]
                out.append(FakeResult(img, r.seed, nbs, "weak" if weak else "ok", unknown))
        ms = (time.perf_counter() - t0) * 1000
        return out, {"text": ms / 4, "retrieval": ms / 4, "unet": ms / 4, "vae": ms / 4}

    def search(self, query: str, k: int) -> list[Any]:
        """``k`` neighbours with falling scores (``retrieval_down``: RetrievalError)."""
        if self.retrieval_down:
            from retrieval.types import RetrievalError

            raise RetrievalError("Qdrant at /secret/path is down")
        return [FakeNeighbour(f"id{i}", f"{query} {i}", 0.9 - 0.1 * i) for i in range(k)]


def real_factory(settings: Any) -> Any:
    """The production factory (retrieval.compose behind the settings)."""
    from service.seam import build_from_settings

    return build_from_settings(settings)
