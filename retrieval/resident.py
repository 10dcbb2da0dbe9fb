"""The device copy of the database that a searching backend serves from.

Qdrant stays the system of record (ingest, ids, payloads, replication). When the backend
can search inside its graph (``engines.backends.SearchingBackend``) and the database fits
the configured size, ``ResidentIndex.load`` copies every fully ingested pair -- its stored
caption vector from the index and its H-features from the feature store -- into the
backend's device index, and maps the rows the graph returns back to pair ids and captions.

Pairs ingested while the service runs (in its process: ``POST /admin/ingest``, which
calls ``refresh`` itself when it is done) reach the copy through ``refresh``: it re-reads the feature store's manifest, takes the ids that are
not resident yet and that the index holds, and appends them (no graph re-capture unless
the preallocated capacity is exceeded). ``retrieval.upkeep.Upkeep`` calls it between batches
every ``refresh_s`` seconds.

``synthetic`` fills the copy with N random pairs made on the device instead (benchmarks
at sizes no disk here holds, e.g. the paper's 630K pairs); it says so in ``source``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from engines.backends.base import SearchingBackend
from retrieval.db import RetrievalDB
from retrieval.types import Neighbour

log = logging.getLogger(__name__)


class ResidentIndex:
    """Row <-> pair bookkeeping for a backend's device index (see module docstring)."""

    def __init__(
        self,
        backend: SearchingBackend,
        db: RetrievalDB | None,
        *,
        feature_dtype: str = "float16",
        chunk: int = 2048,
        headroom: float = 1.25,
    ) -> None:
        self.backend = backend
        self.db = db
        self.feature_dtype = feature_dtype
        self.chunk = int(chunk)
        self.headroom = float(headroom)
        self.ids: list[str] = []
        self.captions: list[str] = []
        self._row: dict[str, int] = {}
        self.source = "database" if db is not None else "synthetic"
        self.load_s = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ loading
    def load(self) -> int:
        """Copy every fully ingested pair to the device; returns the rows loaded."""
        assert self.db is not None, "load needs a database (use synthetic() otherwise)"
        t0 = time.perf_counter()
        self.ids, self.captions, self._row = [], [], {}  # a failed earlier load leaves nothing
        n_store = len(self.db.store)
        self.backend.reserve_index(max(1024, int(n_store * self.headroom)), self.feature_dtype)
        added = self._add(list(self.db.store.ids()))
        self.load_s = time.perf_counter() - t0
        log.info(
            "resident index: %d pairs copied to %s in %.1f s (%s features)",
            added, self.backend.device, self.load_s, self.feature_dtype,
        )
        return added

    def refresh(self) -> int:
        """Append pairs ingested since the last load/refresh; returns how many."""
        if self.db is None:
            return 0
        self.db.store.refresh()
        new = [i for i in self.db.store.ids() if i not in self._row]
        if not new:
            return 0
        added = self._add(new)
        if added:
            log.info("resident index: %d new pair(s) added (%d in all)", added, len(self.ids))
        return added

    def _add(self, ids: Sequence[str]) -> int:
        assert self.db is not None
        added = 0
        for i in range(0, len(ids), self.chunk):
            part = list(ids[i : i + self.chunk])
            vecs = self.db.index.vectors(part)  # only what the index holds: fully ingested
            part = [p for p in part if p in vecs]
            if not part:
                continue
            emb = torch.from_numpy(np.stack([vecs[p] for p in part]))
            feats = self.db.store.features(part)
            self._append(part, [self.db.store.row(p)["caption"] for p in part], emb, feats)
            added += len(part)
        return added

    def _append(self, ids: list[str], captions: list[str], emb: torch.Tensor, feats: torch.Tensor) -> None:
        rows = self.backend.add_index_rows(emb, feats)
        if rows.start != len(self.ids) or len(rows) != len(ids):
            raise RuntimeError(f"device index rows {rows} out of step with {len(self.ids)} resident ids")
        for pid in ids:
            self._row[pid] = len(self.ids)
            self.ids.append(pid)
        self.captions.extend(captions)

    @classmethod
    def synthetic(
        cls, backend: SearchingBackend, n: int, *, feature_dtype: str = "float16", seed: int = 0,
        chunk: int = 16384,
    ) -> ResidentIndex:
        """N random unit caption vectors and random H-features made on the device."""
        if n < 1:
            raise ValueError(f"synthetic pairs must be >= 1, got {n}")
        self = cls(backend, None, feature_dtype=feature_dtype)
        t0 = time.perf_counter()
        backend.reserve_index(n, feature_dtype)
        g = torch.Generator(device=backend.device).manual_seed(seed)
        d, shape = backend.embed_dim, backend.h_shape
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            emb = torch.randn((m, d), generator=g, device=backend.device)
            feats = torch.randn((m, *shape), generator=g, device=backend.device)
            ids = [f"synthetic-{j}" for j in range(i, i + m)]
            self._append(ids, [f"synthetic pair {j}" for j in range(i, i + m)], emb, feats)
        self.load_s = time.perf_counter() - t0
        log.warning(
            "resident index: %d SYNTHETIC pairs (benchmark only) made on %s in %.1f s",
            n, backend.device, self.load_s,
        )
        return self

    # ------------------------------------------------------------------ reads
    def neighbours(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[Neighbour]:
        """The first ``k`` of one request's rows/scores as neighbours (empty rows dropped)."""
        out = []
        for r, s in zip(rows[:k].tolist(), scores[:k].tolist()):
            if r < len(self.ids) and np.isfinite(s):
                out.append(Neighbour(self.ids[r], self.captions[r], float(s)))
        return out


def device_copy(pipeline: SearchingBackend, db: RetrievalDB, qdrant_server: bool, max_pairs: int,
                feature_dtype: str, refresh_s: float) -> tuple[ResidentIndex | None, ResidentIndex | None, str | None]:
    """(the loaded device copy, one still to load, the load error) of ``db`` for a searching
    backend: a Qdrant server (``qdrant_server``) or more than
    ``max_pairs`` pairs keep the search in the index (no copy); a copy that fails to load is
    retried every ``refresh_s`` while the index answers."""
    n = len(db.store)
    if qdrant_server or n > max_pairs:
        log.info("retrieval: %d pairs%s: the search goes to %s, the graph receives the neighbours",
                 n, " with a Qdrant server" if qdrant_server else f" > device_index_max_pairs={max_pairs}",
                 db.backend_name)
        return None, None, None
    resident = ResidentIndex(pipeline, db, feature_dtype=feature_dtype)
    try:
        resident.load()
    except Exception as e:  # noqa: BLE001 - e.g. the index is not reachable yet
        err = f"{type(e).__name__}: {e}"
        log.error("device copy of the database not loaded (%s); searching the index "
                  "until it loads (retried every %.0f s)", err, refresh_s)
        return None, resident, err
    return resident, None, None
