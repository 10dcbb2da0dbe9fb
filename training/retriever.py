"""Retrieval during training: one small protocol and its implementations.

``Retriever``: (pooled prompt embeddings (B,D), k, exclude_ids per sample) ->
(h_retr (B,k,C,h,w), λ (B,k)). λ is the cosine score of the neighbour's caption against the
prompt, 0 below ``min_score``, when not positive and for missing neighbours (whose features
are zeros), exactly what the service feeds the adapter (``engines.rules.neighbour_lambda``).

- ``NullRetriever``: the control run — zero features, λ = 0 (the adapter contributes nothing).
- ``DbRetriever`` (``training.retriever_db``): a ``retrieval.db.RetrievalDB``, the service's
  index + feature store, or (``DbRetriever.in_memory``) an exact in-memory one over the
  training pairs; it turns neighbours into tensors with ``gather`` (one copy).
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
