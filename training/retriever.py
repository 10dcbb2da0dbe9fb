"""Retrieval during training: one small protocol and its implementations.

``Retriever``: (pooled prompt embeddings (B,D), k, exclude_ids per sample) ->
(h_retr (B,k,C,h,w), λ (B,k)). λ is the cosine score of the neighbour's caption against the
prompt, 0 below ``min_score``, when not positive and for missing neighbours (whose features
are zeros), exactly what the service feeds the adapter (``engines.stages.neighbour_lambda``).

- ``InMemoryRetriever``: exact cosine search over a matrix (built from the training pairs).
- ``NullRetriever``: the control run — zero features, λ = 0 (the adapter contributes nothing).
- ``DbRetriever`` (``training.retriever_db``): the ``retrieval`` package's index + feature store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from engines.stages import neighbour_lambda


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


class InMemoryRetriever:
    """Exact cosine top-k over ``embeddings`` (N,D) with H-features ``features`` (N,C,h,w).

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
        self._row = {pid: i for i, pid in enumerate(self.ids)}
        self.emb = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)
        # fp16 in host memory, as the service's feature store keeps them (SD: 160 KiB a pair)
        self.features = features.detach().cpu().to(torch.float16)
        self.min_score = float(min_score)

    def __len__(self) -> int:
        return len(self.ids)

    def __call__(
        self, pooled: torch.Tensor, k: int, exclude_ids: Sequence[frozenset[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = pooled.shape[0]
        if len(exclude_ids) != b:
            raise ValueError(f"{len(exclude_ids)} exclude sets for a batch of {b}")
        q = torch.nn.functional.normalize(pooled.detach().float().cpu(), dim=-1)
        sims = q @ self.emb.T  # (B,N)
        for i, ex in enumerate(exclude_ids):
            rows = [self._row[e] for e in ex if e in self._row]
            if rows:
                sims[i, rows] = float("-inf")
        kk = min(k, sims.shape[1])
        score, idx = sims.topk(kk, dim=1)
        h = self.features[idx].float()  # (B,kk,C,h,w)
        lam = neighbour_lambda(score, self.min_score)
        h = h * (lam != 0)[:, :, None, None, None]
        if kk < k:  # fewer pairs than k: pad with null neighbours
            h = torch.cat([h, torch.zeros((b, k - kk, *h.shape[2:]))], 1)
            lam = torch.cat([lam, torch.zeros((b, k - kk))], 1)
        return h, lam
