"""The training-side adapter over the ``retrieval`` package (the service's index + feature store).

Same calls as serving (``RetrievalDB.search`` and ``.features``), same λ rule as
``retrieval.compose`` (``engines.rules.neighbour_lambda``): the cosine score, or 0 when it
is not positive or under ``min_score``.
Missing neighbours are null (zero features, λ = 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.retriever import gather

log = logging.getLogger(__name__)


class DbRetriever:
    """Retriever over a ``retrieval.db.RetrievalDB``."""

    def __init__(self, db: Any, h_shape: tuple[int, int, int], min_score: float = 0.0) -> None:
        self.db = db
        self.h_shape = tuple(h_shape)
        self.min_score = float(min_score)

    @classmethod
    def in_memory(cls, ids: Sequence[str], embeddings: torch.Tensor, features: torch.Tensor,
                  min_score: float = 0.0) -> DbRetriever:
        """Exact cosine top-k in memory (``retrieval.memory_index``) over ``embeddings`` (N,D),
        any scale, with H-features ``features`` (N,C,h,w), kept in fp16 on the CPU as the
        service's feature store keeps them; ``ids`` are what ``exclude_ids`` refers to."""
        from retrieval.db import RetrievalDB
        from retrieval.memory_index import MemoryFeatures, MemoryIndex

        if not len(ids) == len(embeddings) == len(features):
            raise ValueError(f"{len(ids)} ids, {len(embeddings)} embeddings, {len(features)} features")
        feats = features.detach().cpu().to(torch.float16)
        db = RetrievalDB(MemoryIndex.from_vectors(list(ids), embeddings), MemoryFeatures(list(ids), feats))
        return cls(db, tuple(feats.shape[1:]), min_score)  # type: ignore[arg-type]

    @classmethod
    def open(
        cls,
        pipe: Any,
        *,
        db_path: str | None = None,
        qdrant_url: str | None = None,
        qdrant_api_key: str | None = None,
        min_score: float = 0.0,
    ) -> DbRetriever:
        """Open the database ingested for the student model (fingerprint-checked by retrieval)."""
        from retrieval.db import DbConfig, open_db_for_pipeline

        cfg = DbConfig(db_path=Path(db_path or "data"), qdrant_url=qdrant_url,
                       qdrant_api_key=qdrant_api_key)
        db = open_db_for_pipeline(cfg, pipe)
        log.info("training retrieval: %s, %d pairs", db.backend_name, db.count())
        return cls(db, pipe.h_shape, min_score)

    def __call__(
        self, pooled: torch.Tensor, k: int, exclude_ids: Sequence[frozenset[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        neigh = self.db.search(pooled.detach().float().cpu(), k, list(exclude_ids))
        return gather(neigh, self.db.features, k, self.h_shape, self.min_score)
