"""``POST /admin/ingest``: add pairs to the database the running service serves.

The supported way to grow the database of a running service (the embedded Qdrant Edge
shard is held by the service, so ``ragturbo ingest`` cannot open it meanwhile). The
route exists only when ``RAGTURBO_INGEST_DIR`` is set (it needs ``RAGTURBO_API_KEYS``,
and always takes a key); the body names a captions file and an images directory
*under* that directory. The ingest is ``retrieval.ingest.ingest`` -- the same rejects,
idempotence and durable commits as the CLI -- with every model call queued on the model
worker between generation batches, so the service keeps answering while it runs. Pairs
are searchable in the index when their commit returns; the device copy of a searching
backend takes them on its next refresh (``RAGTURBO_INDEX_REFRESH_S``), or at once when
the response is sent (the route refreshes it). One ingest at a time (409 otherwise).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service.auth import State, require_key
from service.errors import InvalidInput, NotReady, ServiceError
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger(__name__)
MAX_REJECTS_SHOWN = 100


class Conflict(ServiceError):
    status, type, code = 409, "conflict_error", "ingest_running"


class IngestRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    captions: str = Field(..., min_length=1, description="Captions file (jsonl, csv, parquet) under INGEST_DIR.")
    images: str = Field(..., min_length=1, description="Images directory under INGEST_DIR.")


class RejectOut(BaseModel):
    line: int = Field(description="1-based line of the row in the captions file.")
    file: str
    reason: str


class IngestResponse(BaseModel):
    rows: int
    added: int
    already_present: int
    duplicates: int
    rejected: int
    rejects: list[RejectOut] = Field(description=f"The first {MAX_REJECTS_SHOWN} rejects.")
    seconds: float
    pairs: int = Field(description="Pairs the database holds after the ingest.")


class _OnModelWorker:
    """The engine's encoders, each call queued on the service's model worker thread."""

    def __init__(self, pipe: Any, state: ServiceState) -> None:
        self._pipe, self._pool = pipe, state.gpu_pool
        self.resolution = pipe.resolution

    def _run(self, name: str, *args: Any) -> Any:
        return self._pool.submit(getattr(self._pipe, name), *args).result()

    def encode_text(self, prompts: list[str]) -> Any:
        return self._run("encode_text", prompts)

    def encode_images(self, images: Any) -> Any:
        return self._run("encode_images", images)

    def retrieval_features(self, latents: Any, context: Any) -> Any:
        return self._run("retrieval_features", latents, context)


def _under(root: Path, rel: str, what: str) -> Path:
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise InvalidInput(f"{what}: {rel!r} is outside the ingest directory", param=what)
    return p


def _ingest(state: ServiceState, db: Any, captions: Path, images: Path) -> Any:
    """Worker thread: read the table, ingest, refresh the device copy."""
    from retrieval.ingest import ingest, read_captions

    t2i = state.t2i
    rows = read_captions(captions)
    rejects = state.settings.db_path / "ingest-rejects.jsonl"
    rep = ingest(_OnModelWorker(t2i.pipe, state), db, images, rows,  # type: ignore[union-attr]
                 rejects_path=rejects, progress=False)
    resident = getattr(t2i, "resident", None)
    if resident is not None and rep.added:
        state.gpu_pool.submit(resident.refresh).result()  # served from the next batch on
    return rep


def build_admin_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    if settings.ingest_dir is None:
        return router
    root = Path(settings.ingest_dir)
    lock = asyncio.Lock()
    pool = ThreadPoolExecutor(1, thread_name_prefix="ragturbo-ingest")

    @router.post("/admin/ingest", response_model=IngestResponse, dependencies=[Depends(require_key)])
    async def admin_ingest(body: IngestRequest, state: State) -> IngestResponse:
        """Ingest the pairs of a captions file into the served database (see docs/service.md)."""
        from retrieval.feature_store import FeatureStore

        db = getattr(state.t2i, "db", None)
        if not state.ready or db is None or not isinstance(db.store, FeatureStore):
            raise NotReady("no retrieval database to ingest into (see /readyz)", code="no_database")
        captions = _under(root, body.captions, "captions")
        images = _under(root, body.images, "images")
        if not captions.is_file():
            raise InvalidInput(f"captions: {body.captions!r} is not a file", param="captions")
        if not images.is_dir():
            raise InvalidInput(f"images: {body.images!r} is not a directory", param="images")
        if lock.locked():
            raise Conflict("another ingest is running; retry when it has finished")
        async with lock:
            with state.track():
                loop = asyncio.get_running_loop()
                try:
                    rep = await loop.run_in_executor(pool, _ingest, state, db, captions, images)
                except ValueError as e:  # the captions table itself (columns, suffix)
                    raise InvalidInput(str(e), param="captions") from e
        log.info("admin ingest of %s: %s", body.captions, rep.summary())
        return IngestResponse(
            rows=rep.rows, added=rep.added, already_present=rep.already_present,
            duplicates=rep.duplicates, rejected=len(rep.rejects),
            rejects=[RejectOut(line=r.line, file=r.file, reason=r.reason)
                     for r in rep.rejects[:MAX_REJECTS_SHOWN]],
            seconds=round(rep.seconds, 3), pairs=len(db.store),
        )

    return router
