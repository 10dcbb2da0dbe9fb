"""Qdrant Edge (``qdrant-edge-py``): the Qdrant engine in-process, one shard on disk.

The embedded default under ``<db>/edge``. Writes go through Qdrant's WAL and are
flushed before ``upsert`` returns. One process opens a shard at a time: run ingest while
the service is stopped, or use the server backend. If the shard cannot be opened (held
by another process) the index keeps trying with backoff (``retrieval.reconnect``);
until then every call raises ``RetrievalError`` and ``status()`` says why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.index import VectorIndex
from retrieval.reconnect import Reconnector
from retrieval.types import Neighbour, RetrievalError

log = logging.getLogger(__name__)


class EdgeIndex(VectorIndex):
    """Qdrant Edge shard at ``path`` with one cosine vector of width ``dim``.

    hnsw_m / ef_construct: graph build parameters (Qdrant defaults 16 / 100);
    hnsw_ef: search beam (None = Qdrant's default, max(ef_construct, k)); exact: brute force.
    indexing_threshold_kb: segments whose vectors take less are not HNSW-indexed at all
    (None = Qdrant's default); full_scan_threshold_kb: below it a search scans exactly.
    """

    name = "qdrant-edge"

    def __init__(
        self,
        path: str | Path,
        dim: int,
        *,
        hnsw_m: int = 16,
        ef_construct: int = 100,
        hnsw_ef: int | None = 128,
        full_scan_threshold_kb: int = 10_000,
        exact: bool = False,
        max_search_threads: int | None = None,
        indexing_threshold_kb: int | None = None,
        reconnect: bool = True,
    ) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.path = Path(path)
        self.dim = int(dim)
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        cfg = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=hnsw_m, ef_construct=ef_construct, full_scan_threshold=full_scan_threshold_kb
            ),
            max_search_threads=max_search_threads,
            optimizers=(
                None
                if indexing_threshold_kb is None
                else qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
            ),
        )
        self._cfg = cfg
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef, exact=exact)
        self._lock = threading.RLock()
        self._closed = False
        self._shard: Any = None
        self._reconnect = Reconnector(f"Qdrant Edge shard at {self.path}", self._open)
        try:
            self._open()
        except RetrievalError as e:
            if not reconnect:
                raise
            self._reconnect.start(e)
        else:
            self._reconnect.mark_connected()

    def _open(self) -> None:
        qe = self._qe
        try:
            if (self.path / "edge_config.json").is_file():
                shard = qe.EdgeShard.load(str(self.path), self._cfg)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(self.path), self._cfg)
        except Exception as e:  # the binding raises plain exceptions with Qdrant's message
            if "WouldBlock" in str(e):
                raise RetrievalError(
                    f"the Qdrant Edge shard at {self.path} is in use by another process (a running "
                    "`ragturbo serve`?): stop that process first, or add the pairs through the "
                    "running service (POST /admin/ingest)"
                ) from e
            raise RetrievalError(
                f"cannot open Qdrant Edge shard at {self.path} (dim {self.dim}): {e}"
            ) from e
        with self._lock:
            if self._closed:
                shard.close()
                return
            self._shard = shard

    @property
    def _open_shard(self) -> Any:
        shard = self._shard
        if shard is None:
            _, reason = self._reconnect.status()
            raise RetrievalError(reason or f"Qdrant Edge shard at {self.path} is not open")
        return shard

    def status(self) -> tuple[bool, str | None]:
        """(True, None) when the shard is open, else (False, why)."""
        return self._reconnect.status()

    def _upsert(self, ids: Sequence[str], x: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        qe = self._qe
        pts = [qe.Point(i, v.tolist(), dict(p)) for i, v, p in zip(ids, x, payloads)]
        with self._lock:
            shard = self._open_shard
            shard.update(qe.UpdateOperation.upsert_points(pts))
            shard.flush()

    def _search(self, x: np.ndarray, ks: list[int], ex: list[frozenset[str]]) -> list[list[Neighbour]]:
        qe = self._qe
        reqs = [
            qe.QueryRequest(
                limit=kk,
                query=qe.Query.Nearest(v.tolist()),
                with_payload=["caption"],
                filter=qe.Filter(must_not=[qe.HasIdCondition(set(e))]) if e else None,
                params=self._params,
            )
            for v, kk, e in zip(x, ks, ex)
        ]
        if not reqs:
            return []
        res = self._open_shard.query_batch(qe.QueryBatchRequest(reqs))
        return [
            [
                Neighbour(str(p.id), str((p.payload or {}).get("caption", "")), float(p.score))
                for p in r
            ]
            for r in res
        ]

    def count(self) -> int:
        return int(self._open_shard.count(self._qe.CountRequest(exact=True)))

    def contains(self, ids: Sequence[str]) -> list[bool]:
        if not ids:
            return []
        found = {str(r.id) for r in self._open_shard.retrieve(list(ids), False, False)}
        return [i in found for i in ids]

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        return {
            str(r.id): dict(r.payload or {})
            for r in self._open_shard.retrieve(list(ids), True, False)
        }

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        return {
            str(r.id): np.asarray(r.vector, dtype=np.float32)
            for r in self._open_shard.retrieve(list(ids), False, True)
        }

    def optimize(self) -> None:
        with self._lock:
            shard = self._open_shard
            changed = shard.optimize()
            shard.flush()
        log.info(
            "qdrant edge optimize at %s: %s", self.path, "rebuilt" if changed else "already optimal"
        )

    def info(self) -> dict[str, int]:
        i = self._open_shard.info()
        return {
            "points": int(i.points_count),
            "segments": int(i.segments_count),
            "indexed_vectors": int(i.indexed_vectors_count),
        }

    def close(self) -> None:
        self._reconnect.stop()
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._shard is not None:
                    self._shard.flush()
                    self._shard.close()
