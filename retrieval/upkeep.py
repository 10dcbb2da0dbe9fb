"""What keeps a ``TextToImage`` serving, beside composition: health, warm-up and the device copy.

``Upkeep`` owns the device copy of the database (``retrieval.resident.ResidentIndex``) of a
searching backend: the copy in use, a copy that could not be loaded at startup (retried on
every refresh while the index serves), and the refresh of pairs ingested meanwhile, every
``refresh_s`` seconds between batches (``tick``). ``health`` says where search runs, or why
retrieval is unavailable (/readyz); ``warmup`` compiles and captures what serving runs.
"""

from __future__ import annotations

import logging
import time

from engines.backends.base import Backend, SearchingBackend
from retrieval.db import RetrievalDB
from retrieval.resident import ResidentIndex

log = logging.getLogger(__name__)


class Upkeep:
    """Health, warm-up and the device copy's refresh for one backend and database."""

    def __init__(
        self, backend: Backend | None, db: RetrievalDB | None, *, resident: ResidentIndex | None = None,
        pending: ResidentIndex | None = None, refresh_s: float = 30.0, db_error: str | None = None,
    ) -> None:
        if resident is not None and not isinstance(backend, SearchingBackend):
            raise TypeError(f"a resident index needs a SearchingBackend, got {type(backend).__name__}")
        self.backend = backend  # None: the bare torch pipeline (nothing to warm up)
        self.db = db
        self.resident = resident
        self._pending = pending
        self._pending_error = db_error or ""
        self.db_error = db_error
        self.refresh_s = float(refresh_s)
        self._last_refresh = time.monotonic()

    @property
    def host_db(self) -> RetrievalDB | None:
        """The database searched on the host (``search``; the device copy's own when only it serves)."""
        return self.db if self.db is not None else self.resident.db if self.resident is not None else None

    @property
    def where(self) -> str:
        """Where retrieval runs, for the log and /readyz."""
        if self.resident is not None:
            return f"device-index ({self.resident.source}, {len(self.resident)} pairs)"
        return self.db.backend_name if self.db is not None else "none"

    def health(self) -> tuple[bool, str]:
        """(True, where search runs) or (False, why retrieval is unavailable)."""
        db = self.host_db
        excluded = db.excluded_shards() if db is not None else None
        if excluded:
            return False, excluded
        name = self.backend.backend_name if self.backend is not None else "torch"
        if self.resident is not None:  # the device copy serves even while the index is down
            return True, f"search inside the {name} graph over {len(self.resident)} pairs ({self.resident.source})"
        if self.db is None:
            return False, self.db_error or "no retrieval database"
        ok, why = self.db.index_status()
        if not ok:
            return False, why or f"{self.db.backend_name} unavailable"
        if self._pending is not None:
            return True, f"search in {self.db.backend_name}; device copy not loaded yet ({self._pending_error})"
        return True, f"search in {self.db.backend_name}"

    def warmup(self) -> float:
        """Compile/capture every batch bucket of the backend now (before traffic); seconds."""
        return 0.0 if self.backend is None else float(self.backend.warmup(search=self.resident is not None))

    def tick(self) -> ResidentIndex | None:
        """Between batches: refresh the device copy (or retry loading it) when ``refresh_s``
        has passed; returns the copy to search in the graph now (None: search on the host)."""
        if (self.resident is None and self._pending is None) or self.refresh_s <= 0:
            return self.resident
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_s:
            return self.resident
        self._last_refresh = now
        if self._pending is not None:
            self._load_pending()
            return self.resident
        assert self.resident is not None
        try:
            self.resident.refresh()
        except Exception as e:  # noqa: BLE001 - a failed refresh keeps serving the old copy
            log.error("resident index refresh failed (%s: %s); serving the copy as is", type(e).__name__, e)
        return self.resident

    def _load_pending(self) -> None:
        pend = self._pending
        assert pend is not None and isinstance(self.backend, SearchingBackend)
        try:
            pend.load()
        except Exception as e:  # noqa: BLE001 - keep serving through the index; retry later
            self._pending_error = f"{type(e).__name__}: {e}"
            log.warning("device copy of the database still not loaded (%s)", self._pending_error)
            return
        self.backend.warmup(search=True)
        self.resident, self._pending = pend, None
        log.info("device copy of the database loaded: search now runs inside the graph")
