"""The retrieval split as the adapter's database, in memory (``RetrievalSplitDB``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from retrieval.db import RetrievalDB


@dataclass
class RetrievalSplitDB:
    """The retrieval split in memory: captions, normalised pooled embeddings (N,D), H (N,C,h,w).

    ``as_db`` serves it to ``retrieval.compose`` as a ``retrieval.db.RetrievalDB`` (exact
    cosine in memory, λ by ``engines.rules.neighbour_lambda``), the path the service runs.
    """

    ids: list[str]
    captions: list[str]
    pooled: torch.Tensor
    features: torch.Tensor
    long_tail: np.ndarray

    @staticmethod
    def build(pipe: Any, n: int, batch: int = 512) -> RetrievalSplitDB:
        """Regenerate items 0..n-1 of the retrieval split and compute their features with ``pipe``."""
        from toyworld.models.data import make_split

        return RetrievalSplitDB.from_split(pipe, make_split("retrieval", n), batch)

    @staticmethod
    def from_split(pipe: Any, sp: Any, batch: int = 512) -> RetrievalSplitDB:
        """The pairs of a ``toyworld.models.data.Split`` with images: normalised pooled caption
        embeddings and H-features (the student's encoder at t = 0) computed with ``pipe``."""
        assert sp.images is not None
        n = len(sp)
        pooled, feats = [], []
        for i in range(0, n, batch):
            te = pipe.encode_text(sp.captions[i : i + batch])
            lat = pipe.encode_images(sp.images[i : i + batch])
            feats.append(pipe.retrieval_features(lat, te.context).float())
            pooled.append(torch.nn.functional.normalize(te.pooled.float(), dim=-1))
        ids = [f"retrieval-{i}" for i in range(n)]
        return RetrievalSplitDB(ids, sp.captions, torch.cat(pooled), torch.cat(feats), sp.long_tail)

    def as_db(self) -> RetrievalDB:
        """A ``retrieval.db.RetrievalDB`` over these pairs, searched on the device they live on."""
        from retrieval.db import RetrievalDB
        from retrieval.memory_index import MemoryFeatures, MemoryIndex

        index = MemoryIndex.from_vectors(self.ids, self.pooled, [{"caption": c} for c in self.captions],
                                         device=self.pooled.device, unit=True)
        return RetrievalDB(index, MemoryFeatures(self.ids, self.features))


ADAPTER_NOISE_SEED = 1_000_000
"""Noise seed of the first adapter target (sample i: + i); clear of the eval seeds (1000·i + j)."""
