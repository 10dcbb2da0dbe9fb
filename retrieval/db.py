"""One retrieval database: a vector index (Edge or server) plus the feature store.

``open_db`` is what ingest, search, compose and the training job call. Layout of the
data directory (``RAGTURBO_DB_PATH``, default ``./data``)::

    <db>/edge/       Qdrant Edge shard (embedded backend)
    <db>/features/   feature store (both backends; with a Qdrant server, put <db> on a
                     volume every replica mounts, or ingest once per replica)
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retrieval.feature_store import FeatureStore
from retrieval.index import VectorIndex
from retrieval.types import FingerprintMismatchError, Neighbour

if TYPE_CHECKING:
    from engines.backends.base import Backend
    from engines.pipeline import OneStepPipeline
    from retrieval.memory_index import MemoryFeatures

log = logging.getLogger(__name__)


@dataclass
class DbConfig:
    """Where the database lives and how to reach it."""

    db_path: Path = Path("data")
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_timeout_s: float = 5.0
    qdrant_retries: int = 2
    qdrant_local: str | None = None  # qdrant-client local mode: ":memory:" or a path (tests)
    hnsw_ef: int | None = 128
    cache_items: int = 4096
    reconnect: bool = True  # an index that cannot be opened: retry in the background (the
    # service) or raise at open (False: the ingest CLI, before any work)


class RetrievalDB:
    """search(embeddings (B,D), k, exclude_ids) -> neighbours; features(ids) -> (n,C,h,w) fp16.

    The store is a ``FeatureStore`` on disk, or for a database built in memory a
    ``retrieval.memory_index.MemoryFeatures`` (read-only: no ``upsert``).
    """

    def __init__(self, index: VectorIndex, store: FeatureStore | MemoryFeatures) -> None:
        self.index = index
        self.store = store

    @property
    def backend_name(self) -> str:
        return self.index.name

    def search(
        self,
        embeddings: Any,
        k: int | Sequence[int],
        exclude_ids: Collection[str] | Sequence[Collection[str]] | None = None,
    ) -> list[list[Neighbour]]:
        """Top-k per query; neighbours whose features are not in the store are dropped."""
        res = self.index.search(embeddings, k, exclude_ids)
        missing = {n.id for r in res for n in r if n.id not in self.store}
        if missing:
            self.store.refresh()
            missing = {m for m in missing if m not in self.store}
            if missing:
                log.warning(
                    "%d indexed point(s) have no features; treating them as absent", len(missing)
                )
        return [[n for n in r if n.id not in missing] for r in res]

    def features(self, ids: Sequence[str]) -> torch.Tensor:
        return self.store.features(ids)

    def count(self) -> int:
        return self.index.count()

    def contains(self, ids: Sequence[str]) -> list[bool]:
        """True where a point is in both the index and the store (i.e. fully ingested)."""
        in_store = self.store.has(ids)
        cand = [i for i, s in zip(ids, in_store) if s]
        in_index = dict(zip(cand, self.index.contains(cand)))
        return [in_index.get(i, False) for i in ids]

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: torch.Tensor,
        h: torch.Tensor,
        latents: torch.Tensor,
        captions: Sequence[str],
        files: Sequence[str],
    ) -> None:
        """Features first (durable), then the index: a crash never indexes a point without features."""
        if not isinstance(self.store, FeatureStore):
            raise TypeError(f"upsert needs a FeatureStore on disk, not {type(self.store).__name__}")
        self.store.put(ids, h, latents, captions, files)
        payloads = [
            {"caption": c, "file": f, "fingerprint": self.store.fingerprint}
            for c, f in zip(captions, files)
        ]
        self.index.upsert(list(ids), embeddings.detach().float().cpu().numpy(), payloads)

    def excluded_shards(self) -> str | None:
        """Why some pairs are not served (feature-store shards excluded; the readable ones
        still serve), or None."""
        bad = getattr(self.store, "bad_shards", None)  # a FeatureStore; MemoryFeatures has none
        if not bad:
            return None
        return (f"{len(bad)} feature-store shard(s) excluded, their pairs not served "
                f"(retried on refresh): {', '.join(sorted(bad))}: {next(iter(bad.values()))}")

    def index_status(self) -> tuple[bool, str | None]:
        """(True, None), or (False, why) when the index reports itself down."""
        status = getattr(self.index, "status", None)  # indexes that can be down say so
        ok, why = status() if status is not None else (True, None)
        return (True, None) if ok else (False, why or f"{self.backend_name} unavailable")

    def close(self) -> None:
        self.index.close()


def open_index(cfg: DbConfig, dim: int) -> VectorIndex:
    if cfg.qdrant_url or cfg.qdrant_local:
        from retrieval.server_index import QdrantServerIndex

        if cfg.qdrant_url:
            return QdrantServerIndex(
                dim,
                url=cfg.qdrant_url,
                api_key=cfg.qdrant_api_key,
                timeout_s=cfg.qdrant_timeout_s,
                retries=cfg.qdrant_retries,
                hnsw_ef=cfg.hnsw_ef,
                reconnect=cfg.reconnect,
            )
        loc = cfg.qdrant_local
        return QdrantServerIndex(
            dim,
            location=":memory:" if loc == ":memory:" else None,
            path=None if loc == ":memory:" else loc,
        )
    from retrieval.edge_index import EdgeIndex

    return EdgeIndex(Path(cfg.db_path) / "edge", dim, hnsw_ef=cfg.hnsw_ef, reconnect=cfg.reconnect)


def open_db(
    cfg: DbConfig,
    *,
    fingerprint: str,
    embed_dim: int,
    h_shape: Sequence[int],
    latent_shape: Sequence[int] | None,
    device: str | torch.device = "cpu",
    create: bool = False,
) -> RetrievalDB:
    """Open (or with ``create`` make) the database for a model. Raises FingerprintMismatchError
    if the stored features come from another model; RetrievalError if nothing was ingested
    and ``create`` is False."""
    root = Path(cfg.db_path) / "features"
    store = FeatureStore(
        root,
        fingerprint,
        h_shape if create else None,
        latent_shape if create else None,
        cache_items=cfg.cache_items,
        device=device,
    )
    if tuple(store.h_shape) != tuple(h_shape):
        raise ValueError(
            f"feature store {root} has H shape {store.h_shape}, model gives {tuple(h_shape)}"
        )
    return RetrievalDB(open_index(cfg, embed_dim), store)


def open_db_for_pipeline(cfg: DbConfig, pipe: Backend | OneStepPipeline, *, create: bool = False) -> RetrievalDB:
    """``open_db`` with the model's fingerprint, widths and shapes taken from a backend
    (or a ``OneStepPipeline``): every backend has the same typed surface, so this works
    through each of them (tests/retrieval/test_retrieval_backends.py)."""
    return open_db(
        cfg,
        fingerprint=pipe.fingerprint,
        embed_dim=pipe.embed_dim,
        h_shape=pipe.h_shape,
        latent_shape=pipe.latent_shape,
        device=pipe.device,
        create=create,
    )


def open_db_or_reason(cfg: DbConfig, pipeline: Any) -> tuple[RetrievalDB | None, str | None]:
    """The database for ``pipeline``, or (None, the error) when it cannot be opened; features
    made by another model raise (FingerprintMismatchError: a deployment mistake)."""
    try:
        db = open_db_for_pipeline(cfg, pipeline)
    except FingerprintMismatchError:
        raise
    except Exception as e:  # noqa: BLE001 - an outage must not stop startup
        log.error("retrieval database unavailable (%s); images will be generated without retrieval", e)
        return None, f"{type(e).__name__}: {e}"
    log.info("retrieval: %s with %d stored pairs (features %s)", db.backend_name, len(db.store), db.store.root)
    return db, None
