"""Retrieval during training: one small protocol and its implementations.

``Retriever``: (pooled prompt embeddings (B,D), k, exclude_ids per sample) ->
(h_retr (B,k,C,h,w), λ (B,k)). λ is the cosine score of the neighbour's caption against the
prompt, 0 below ``min_score``, when not positive and for missing neighbours (whose features
are zeros), exactly what the service feeds the adapter (``engines.rules.neighbour_lambda``).

- ``InMemoryRetriever``: ``retrieval.memory_index.MemoryIndex`` (the ``VectorIndex``
  interface, exact cosine in memory) over the training pairs.
- ``NullRetriever``: the control run — zero features, λ = 0 (the adapter contributes nothing).
- ``DbRetriever`` (``training.retriever_db``): the ``retrieval`` package's index + feature store.

Both turn neighbours into tensors with ``gather`` (one copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Retriever(Protocol):
    def __call__(
        self, pooled: torch.Tensor, k: int, exclude_ids: Sequence[frozenset[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (B,D), k, B exclude sets -> h_retr (B,k,C,h,w) float32, lam (B,k) float32 (CPU)."""
        ...


class NullRetriever:
    """Control: every neighbour is null (zero H-features, λ = 0)."""

    def __init__(self, h_shape: tuple[int, int, int]) -> None:
        self.h_shape = tuple(h_shape)

    def __call__(
        self, pooled: torch.Tensor, k: int, exclude_ids: Sequence[frozenset[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = pooled.shape[0]
        return torch.zeros((b, k, *self.h_shape)), torch.zeros((b, k))


def gather(
    neigh: Sequence[Sequence[Any]], features: Callable[[list[str]], torch.Tensor], k: int,
    h_shape: tuple[int, ...], min_score: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbours per sample (best first) -> h_retr (B,k,C,h,w), λ (B,k) float32 on the CPU,
    by the service's one gather (``engines.request.gather_neighbours``): λ is
    ``neighbour_lambda``; a neighbour with λ = 0 and a missing one (fewer than k) get zero
    features. ``features(ids)`` gives the H-features of the ids in order."""
    from engines.request import gather_neighbours

    flat = [n.id for ns in neigh for n in ns[:k]]
    feats = features(flat) if flat else torch.zeros((0, *h_shape))
    nb = gather_neighbours([[float(n.score) for n in ns[:k]] for ns in neigh], feats, h_shape, min_score, k=k)
    return nb.h_retr, nb.lam


class InMemoryRetriever:
    """Exact cosine top-k (``retrieval.memory_index.MemoryIndex``) over ``embeddings`` (N,D)
    with H-features ``features`` (N,C,h,w).

    Args:
        ids: N point ids (what ``exclude_ids`` refers to).
        embeddings: pooled caption embeddings (N,D), any scale (normalised here).
        features: H-features (N,C,h,w) of each pair (UNet encoder at t=0, clean latent).
        min_score: scores below (and scores <= 0) get λ = 0.
    """

    def __init__(
        self,
        ids: Sequence[str],
        embeddings: torch.Tensor,
        features: torch.Tensor,
        min_score: float = 0.0,
    ) -> None:
        from retrieval.memory_index import MemoryIndex

        if embeddings.ndim != 2 or features.ndim != 4:
            raise ValueError(
                f"need embeddings (N,D) and features (N,C,h,w); got {tuple(embeddings.shape)}, "
                f"{tuple(features.shape)}"
            )
        if not len(ids) == embeddings.shape[0] == features.shape[0]:
            raise ValueError(
                f"{len(ids)} ids, {embeddings.shape[0]} embeddings, {features.shape[0]} features"
            )
        self.ids = list(ids)
        self.index = MemoryIndex.from_vectors(self.ids, embeddings)
        self._row = {pid: i for i, pid in enumerate(self.ids)}
        # fp16 in host memory, as the service's feature store keeps them (SD: 160 KiB a pair)
        self.features = features.detach().cpu().to(torch.float16)
        self.h_shape = tuple(self.features.shape[1:])
        self.min_score = float(min_score)

    def __len__(self) -> int:
        return len(self.ids)

    def _features(self, ids: list[str]) -> torch.Tensor:
        return self.features[[self._row[i] for i in ids]]

    def __call__(
        self, pooled: torch.Tensor, k: int, exclude_ids: Sequence[frozenset[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = pooled.shape[0]
        if len(exclude_ids) != b:
            raise ValueError(f"{len(exclude_ids)} exclude sets for a batch of {b}")
        neigh = self.index.search(pooled, k, list(exclude_ids))
        return gather(neigh, self._features, k, self.h_shape, self.min_score)
