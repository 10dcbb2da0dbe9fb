"""``MemoryIndex``: exact cosine top-k over a matrix held in memory, behind ``VectorIndex``.

The third implementation of the index interface (beside Qdrant Edge and the Qdrant server):
no files, no server, for a database that is built on the fly and fits in memory (training
over its own pairs, the toy world's eval database, tests). Search is one matmul and one
``topk`` in torch (float32, on the index's ``device``); excluded ids score -inf and are never
returned. ``MemoryFeatures`` is the feature side of such a database: with both,
``retrieval.db.RetrievalDB`` serves ``retrieval.compose`` exactly as the on-disk database does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retrieval.index import VectorIndex
from retrieval.types import Neighbour

Device = str | torch.device


def _float_tensor(x: Any) -> torch.Tensor:
    """A torch tensor or array-like as a float32 CPU tensor."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class MemoryIndex(VectorIndex):
    """Points id -> (unit vector (D,), payload) in one (N,D) float32 matrix."""

    name = "memory"

    def __init__(self, dim: int, device: Device = "cpu") -> None:
        self.dim = int(dim)
        self.device = torch.device(device)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._payloads: list[dict[str, Any]] = []
        self._vec = torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        self._unit = False

    @classmethod
    def from_vectors(
        cls, ids: Sequence[str], vectors: Any, payloads: Sequence[dict[str, Any]] | None = None,
        *, device: Device = "cpu", unit: bool = False,
    ) -> MemoryIndex:
        """An index over ``vectors`` (N,D) (torch or numpy, any scale: normalised here).

        ``unit=True``: the caller normalised the vectors itself; they (and later upserts) are
        kept bit for bit (normalising a unit vector again can move its last bit, and with it
        a score).
        """
        v = _float_tensor(vectors)
        if v.ndim != 2:
            raise ValueError(f"vectors must be (N,D), got shape {tuple(v.shape)}")
        idx = cls(int(v.shape[1]), device)
        idx._unit = unit
        idx.upsert(ids, v, payloads if payloads is not None else [{} for _ in ids])
        return idx

    def _upsert(self, ids: Sequence[str], x: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        v = torch.from_numpy(x).to(self.device)
        if not self._unit:
            v = torch.nn.functional.normalize(v, dim=-1)
        new: list[torch.Tensor] = []
        for pid, vec, pl in zip(ids, v, payloads):
            pid = str(pid)
            if pid in self._row:
                self._vec[self._row[pid]] = vec
                self._payloads[self._row[pid]] = dict(pl)
                continue
            self._row[pid] = len(self._ids)
            self._ids.append(pid)
            self._payloads.append(dict(pl))
            new.append(vec)
        if new:
            self._vec = torch.cat([self._vec, torch.stack(new)])

    def _search(self, x: np.ndarray, ks: list[int], ex: list[frozenset[str]]) -> list[list[Neighbour]]:
        q = torch.from_numpy(x).to(self.device)
        if len(q) == 0 or not self._ids:
            return [[] for _ in ks]
        sims = torch.nn.functional.normalize(q, dim=-1) @ self._vec.T  # (B,N)
        for i, e in enumerate(ex):
            rows = [self._row[pid] for pid in e if pid in self._row]
            if rows:
                sims[i, rows] = float("-inf")
        score, idx = sims.topk(min(max(ks), sims.shape[1]), dim=1)
        out = []
        for kk, s, r in zip(ks, score.tolist(), idx.tolist()):
            out.append([
                Neighbour(self._ids[j], str(self._payloads[j].get("caption", "")), v)
                for v, j in zip(s[:kk], r[:kk]) if v != float("-inf")
            ])
        return out

    def count(self) -> int:
        return len(self._ids)

    def contains(self, ids: Sequence[str]) -> list[bool]:
        return [str(i) in self._row for i in ids]

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {str(i): dict(self._payloads[self._row[str(i)]]) for i in ids if str(i) in self._row}

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {str(i): self._vec[self._row[str(i)]].cpu().numpy().copy() for i in ids if str(i) in self._row}

    def close(self) -> None:
        """Nothing to release."""


class MemoryFeatures:
    """The H-features of a ``MemoryIndex``'s points, held in one tensor (N,C,h,w).

    The read side of ``retrieval.feature_store.FeatureStore`` (``features``, ``has``,
    ``in``, ``len``, ``refresh``): what ``retrieval.db.RetrievalDB.search`` and
    ``.features`` need. Nothing is written to disk, so ``RetrievalDB.upsert`` needs a
    ``FeatureStore``.
    """

    def __init__(self, ids: Sequence[str], features: torch.Tensor) -> None:
        if features.ndim != 4 or len(ids) != features.shape[0]:
            raise ValueError(f"need {len(ids)} features (N,C,h,w), got shape {tuple(features.shape)}")
        self._row = {str(pid): i for i, pid in enumerate(ids)}
        self._features = features
        self.h_shape = tuple(features.shape[1:])

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, pid: object) -> bool:
        return pid in self._row

    def has(self, ids: Sequence[str]) -> list[bool]:
        return [i in self._row for i in ids]

    def refresh(self) -> bool:
        """Nothing changes behind this store's back: never anything new."""
        return False

    def features(self, ids: Sequence[str]) -> torch.Tensor:
        """(len(ids), C,h,w), in the order of ``ids``, on the device they were given on."""
        return self._features[[self._row[i] for i in ids]]
