"""The request below compose: one typed batch that ``Backend.generate`` takes.

- ``ImageRequest``: one image to make (prompt, seed, mode, k, excluded ids, format); its mode
  and k are checked here, once, for every caller (the service, the CLI, the evals).
- ``Batch``: the requests of one backend call plus how their neighbours come: none (mode
  off, or retrieval down), ``Neighbours`` found on the host (h_retr, λ), or ``search`` =
  the λ threshold for a backend that searches its device copy inside the graph. ``text``
  holds the prompts' embeddings when the caller has them (host search needs the pooled vector).
- ``CONTROLS``: the per-sample values the UNet graph reads, one column each of the
  ``controls`` tensor (B, len(CONTROLS)) float32 that every runtime passes through
  unchanged (``engines.inject.mix_retrieval`` reads it). A new per-request field that reaches
  the UNet is a field of ``ImageRequest``, a column here and its use in ``mix_retrieval``.

``GenerateOutput`` is what every backend returns: uint8 images, stage timings, and for an
in-graph search the rows of the device index and their scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from engines.modes import MAX_K, MODES, Mode

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONTROLS", "Batch", "GenerateOutput", "ImageRequest", "Neighbours", "TextEmbeddings", "chunk_slices",
    "control", "gather_neighbours",
]


@dataclass(frozen=True)
class ImageRequest:
    """One image to make. Raises ValueError naming a bad mode or k."""

    prompt: str
    seed: int
    mode: Mode = "adapter"
    k: int = 1  # 1..MAX_K neighbours
    exclude_ids: frozenset[str] = frozenset()
    fmt: str | None = None  # the image format the caller will encode (an engine may do it)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown retrieval mode {self.mode!r}; choose from {', '.join(MODES)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {self.k!r}")


CONTROLS: tuple[tuple[str, Callable[[ImageRequest], float]], ...] = (
    ("adapter", lambda r: float(r.mode == "adapter")),
    ("inject", lambda r: float(r.mode == "inject")),
)
"""(name, value of a request) of each column of ``Batch.controls()``: adapter = 1 where the
H-adapter mixes the neighbours in, inject = 1 where the top neighbour is slerped in."""


def control(name: str) -> int:
    """The column of ``name`` in the controls tensor."""
    for i, (n, _) in enumerate(CONTROLS):
        if n == name:
            return i
    raise KeyError(f"no control {name!r}; have {[n for n, _ in CONTROLS]}")


@dataclass
class TextEmbeddings:
    """context (B,T,D): per-token states for cross-attention; pooled (B,D): the prompt vector."""

    context: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def select(self, idx: Sequence[int] | slice) -> TextEmbeddings:
        if isinstance(idx, slice):
            return TextEmbeddings(self.context[idx], self.pooled[idx])
        import torch

        i = torch.as_tensor(list(idx), device=self.context.device, dtype=torch.long)
        return TextEmbeddings(self.context.index_select(0, i), self.pooled.index_select(0, i))


@dataclass(frozen=True)
class Neighbours:
    """Retrieved H-features (B,k,C,h,w) and their λ (B,k), found outside the graph."""

    h_retr: torch.Tensor
    lam: torch.Tensor

    def __post_init__(self) -> None:
        if self.h_retr.ndim != 5 or tuple(self.lam.shape) != tuple(self.h_retr.shape[:2]):
            raise ValueError(f"need h_retr (B,k,C,h,w) and lam (B,k), got {tuple(self.h_retr.shape)} "
                             f"and {tuple(self.lam.shape)}")

    @property
    def k(self) -> int:
        return int(self.h_retr.shape[1])


@dataclass(frozen=True)
class Batch:
    """One backend call (see module docstring). ``search`` and ``neighbours`` exclude each other."""

    requests: tuple[ImageRequest, ...]
    text: TextEmbeddings | None = None
    neighbours: Neighbours | None = None
    search: float | None = None  # the λ threshold (min_score) of an in-graph search

    def __post_init__(self) -> None:
        b = len(self.requests)
        if self.search is not None and self.neighbours is not None:
            raise ValueError("a batch searches in the graph or brings neighbours, not both")
        if self.text is not None and len(self.text) != b:
            raise ValueError(f"text embeddings for {len(self.text)} prompts, batch of {b}")
        if self.neighbours is not None and self.neighbours.h_retr.shape[0] != b:
            raise ValueError(f"neighbours for {self.neighbours.h_retr.shape[0]} samples, batch of {b}")

    @classmethod
    def given(
        cls, text: TextEmbeddings, seeds: Sequence[int], modes: Sequence[str] | str = "adapter",
        h_retr: torch.Tensor | None = None, lam: torch.Tensor | None = None,
    ) -> Batch:
        """The positional form (``generate(text, seeds, modes, h_retr, lam)``) as a batch:
        embedded prompts, and neighbours when given. Raises ValueError on a count mismatch."""
        b = len(text)
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {b}")
        ms = [modes] * b if isinstance(modes, str) else list(modes)
        if len(ms) != b:
            raise ValueError(f"got {len(ms)} modes for a batch of {b}")
        if (h_retr is None) != (lam is None):
            raise ValueError("pass both h_retr and lam, or neither")
        nb = Neighbours(h_retr, lam) if h_retr is not None and lam is not None else None
        k = min(nb.k, MAX_K) if nb is not None else 1
        reqs = tuple(ImageRequest("", int(s), m, k) for s, m in zip(seeds, ms))  # type: ignore[arg-type]
        return cls(reqs, text=text, neighbours=nb)

    @classmethod
    def of(
        cls, first: Batch | TextEmbeddings, seeds: Sequence[int] | None = None,
        modes: Sequence[str] | str = "adapter", h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> Batch:
        """``first`` itself when it is a batch (then nothing else may be given), else ``given``."""
        if isinstance(first, Batch):
            if seeds is not None or h_retr is not None or lam is not None:
                raise TypeError("pass a Batch alone, or text embeddings with seeds (and neighbours)")
            return first
        if seeds is None:
            raise TypeError("seeds are needed with text embeddings")
        return cls.given(first, seeds, modes, h_retr, lam)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.requests]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.requests]

    @property
    def modes(self) -> list[str]:
        return [r.mode for r in self.requests]

    @property
    def ks(self) -> list[int]:
        return [r.k for r in self.requests]

    def controls(self) -> torch.Tensor:
        """(B, len(CONTROLS)) float32 on the CPU: the per-sample values the UNet reads."""
        import torch

        return torch.tensor([[fn(r) for _, fn in CONTROLS] for r in self.requests],
                            dtype=torch.float32).reshape(len(self.requests), len(CONTROLS))

    def chunk(self, sl: slice) -> Batch:
        """Rows ``sl`` of the batch (what a backend runs when it splits a large batch)."""
        nb = self.neighbours
        return replace(
            self, requests=self.requests[sl], text=self.text.select(sl) if self.text is not None else None,
            neighbours=Neighbours(nb.h_retr[sl], nb.lam[sl]) if nb is not None else None,
        )

    def chunks(self, step: int | None) -> list[Batch]:
        """The batch in pieces of at most ``step`` (None: whole); exact, samples are independent."""
        return [self.chunk(sl) for sl in chunk_slices(len(self), step)]


def chunk_slices(b: int, step: int | None) -> list[slice]:
    """``range(b)`` in slices of at most ``step`` (None or 0: one slice): the one chunking."""
    step = step or b or 1
    return [slice(i, min(i + step, b)) for i in range(0, b, step)]


@dataclass
class GenerateOutput:
    """What a backend returns for a batch: uint8 images (B,H,W,3) and stage timings (ms:
    text, retrieval, unet, vae). An in-graph search adds ``rows`` int64 (B,K) of the device
    index, best first, and their cosine ``scores`` float32 (B,K) (-inf where the index has
    fewer rows); ``encoded``: per image, the bytes in the request's format when the engine
    encoded it (else None)."""

    images: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    rows: np.ndarray | None = None
    scores: np.ndarray | None = None
    encoded: list[bytes | None] | None = None


def gather_neighbours(
    scores: Sequence[Sequence[float]], features: torch.Tensor, h_shape: Sequence[int], min_score: float,
    *, k: int | None = None, rows: Sequence[int] | None = None, b: int | None = None,
) -> Neighbours:
    """Neighbours found outside the graph -> ``Neighbours`` (b, k) float32 on the CPU: the one gather.

    ``scores[i]``: the cosine scores of sample ``rows[i]``'s neighbours, best first (default
    rows 0..); ``features``: their H-features, flat in the same order (Σ lengths, C,h,w).
    λ is ``engines.rules.neighbour_lambda``; a neighbour with λ = 0 and a missing one (fewer
    than ``k``, default the longest list) get zero features; rows not listed get none.
    """
    import torch

    from engines.rules import neighbour_lambda

    rows = list(range(len(scores))) if rows is None else list(rows)
    b = len(scores) if b is None else int(b)
    k = max(1, max((len(s) for s in scores), default=1) if k is None else int(k))
    feats = features.float().cpu()
    h = torch.zeros((b, k, *h_shape))
    lam = torch.zeros((b, k))
    pos = 0
    for i, sc in zip(rows, scores):
        for j, s in enumerate(sc):
            if j < k:
                h[i, j] = feats[pos]
                lam[i, j] = float(s)
            pos += 1
    lam = neighbour_lambda(lam, min_score)
    return Neighbours(h * (lam != 0)[:, :, None, None, None], lam)
