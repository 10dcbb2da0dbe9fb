"""The vector-index interface: cosine top-k over pooled caption embeddings.

Two implementations share it (docs/retrieval.md): ``EdgeIndex`` (Qdrant Edge, in-process,
the embedded default) and ``QdrantServerIndex`` (qdrant-client: a server/cluster, or
qdrant-client's local mode for tests). The index knows nothing of H-features; the
feature store keeps those (``retrieval.feature_store``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, Self

import numpy as np

from retrieval.types import Neighbour

COLLECTION = "ragturbo_pairs"


def as_matrix(embeddings: Any, dim: int) -> np.ndarray:
    """Embeddings (B,D) as float32 numpy (accepts torch tensors); checks the width."""
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"embeddings must be (B,{dim}), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    return x


def per_query(
    b: int, k: int | Sequence[int], exclude_ids: Collection[str] | Sequence[Collection[str]] | None
) -> tuple[list[int], list[frozenset[str]]]:
    """Normalise k and exclude_ids to one value per query (length B)."""
    ks = [int(k)] * b if isinstance(k, int) else [int(v) for v in k]
    if len(ks) != b or any(v < 1 for v in ks):
        raise ValueError(f"k must be >= 1, one per query ({b}); got {k!r}")
    if exclude_ids is None:
        ex = [frozenset()] * b
    elif isinstance(exclude_ids, (set, frozenset)) or (
        isinstance(exclude_ids, Sequence) and all(isinstance(e, str) for e in exclude_ids)
    ):
        ex = [frozenset(exclude_ids)] * b  # one set applies to every query
    else:
        ex = [frozenset(e) for e in exclude_ids]  # type: ignore[union-attr]
        if len(ex) != b:
            raise ValueError(f"exclude_ids has {len(ex)} entries for {b} queries")
    return ks, ex


class VectorIndex(ABC):
    """Cosine index of pairs: id -> (pooled caption embedding (D,), payload)."""

    name: str
    dim: int

    def upsert(self, ids: Sequence[str], vectors: Any, payloads: Sequence[dict[str, Any]]) -> None:
        """Insert or replace points; vectors (N,D) (numpy or torch). Durable when it returns.

        The vectors are checked and the lengths compared here, once for every
        implementation; ``_upsert`` stores them.
        """
        x = as_matrix(vectors, self.dim)
        if not len(ids) == len(x) == len(payloads):
            raise ValueError(f"ids {len(ids)}, vectors {len(x)}, payloads {len(payloads)} differ")
        if len(ids):
            self._upsert(ids, x, payloads)

    @abstractmethod
    def _upsert(self, ids: Sequence[str], x: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        """x (N,D) float32 (checked), as many ids and payloads (N >= 1)."""

    def search(
        self,
        embeddings: Any,
        k: int | Sequence[int],
        exclude_ids: Collection[str] | Sequence[Collection[str]] | None = None,
    ) -> list[list[Neighbour]]:
        """embeddings (B,D) -> B lists of up to k neighbours, best first (cosine score).

        ``k`` is one int or one per query; ``exclude_ids`` one set for all queries or
        one per query (ids that must never be returned, e.g. the query pair itself).
        The embeddings are checked and the arguments made per-query here, once for
        every implementation; ``_search`` does the rest.
        """
        x = as_matrix(embeddings, self.dim)
        ks, ex = per_query(len(x), k, exclude_ids)
        return self._search(x, ks, ex)

    @abstractmethod
    def _search(self, x: np.ndarray, ks: list[int], ex: list[frozenset[str]]) -> list[list[Neighbour]]:
        """x (B,D) float32 (checked), ks and ex one per query -> B lists, best first."""

    @abstractmethod
    def count(self) -> int:
        """Number of points."""

    @abstractmethod
    def contains(self, ids: Sequence[str]) -> list[bool]:
        """For each id, whether the point exists."""

    @abstractmethod
    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads of the ids that exist."""

    @abstractmethod
    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored (unit-normalised) vectors (D,) float32 of the ids that exist."""

    def optimize(self) -> None:
        """Build/merge index structures after a bulk load (no-op where the server does it)."""

    @abstractmethod
    def close(self) -> None:
        """Release files/connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
