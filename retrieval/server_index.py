"""Qdrant server/cluster through ``qdrant-client`` (URL, API key, timeouts, retries).

For production (docs/architecture.md). Each call retries transient errors (transport, timeouts, 5xx,
429) with exponential backoff (tenacity). A server that is down when the index is opened
does not fail the open: the index reconnects in the background with backoff
(``retrieval.reconnect``), calls raise ``RetrievalError`` until then, and ``status()``
reports the last error (also after a call failed on a connected index). ``location=":memory:"`` or ``path=...`` selects
qdrant-client's *local mode* — a pure-Python brute-force implementation of the same
API, used in tests and for small setups; it is not the Qdrant engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from retrieval.index import COLLECTION, VectorIndex
from retrieval.reconnect import Reconnector
from retrieval.redact import redact_url
from retrieval.types import Neighbour, RetrievalError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transient(e: BaseException) -> bool:
    """Errors worth retrying: transport failures, timeouts, 5xx and 429 from the server."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(e, UnexpectedResponse):
        return e.status_code is not None and (e.status_code >= 500 or e.status_code == 429)
    return isinstance(
        e, (ResponseHandlingException, httpx.TransportError, TimeoutError, ConnectionError)
    )


class QdrantServerIndex(VectorIndex):
    """A collection on a Qdrant server (``url``) or in qdrant-client local mode (``location``/``path``).

    timeout_s: per-request HTTP timeout; retries: extra attempts on transient errors with
    exponential backoff starting at ``backoff_s`` (0.05, 0.1, 0.2 ... s). reconnect: if
    the first connection fails, keep trying in the background (else raise). client: an
    existing ``QdrantClient`` to use (tests).
    """

    name = "qdrant-server"

    def __init__(
        self,
        dim: int,
        *,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        path: str | Path | None = None,
        collection: str = COLLECTION,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        hnsw_m: int = 16,
        ef_construct: int = 100,
        hnsw_ef: int | None = 128,
        reconnect: bool = True,
        client: Any = None,
    ) -> None:
        from qdrant_client import QdrantClient, models

        if client is None and sum(v is not None for v in (url, location, path)) != 1:
            raise ValueError(
                f"give exactly one of url, location, path; got url={url!r} location={location!r} path={path!r}"
            )
        if retries < 0 or timeout_s <= 0:
            raise ValueError(f"retries must be >= 0 and timeout_s > 0; got {retries}, {timeout_s}")
        self._m = models
        self.dim = int(dim)
        self.collection = collection
        self.retries, self.backoff_s = retries, backoff_s
        self._last_error: str | None = None
        if client is not None:
            self.where = redact_url(url) if url else str(location or path or "client")
            self._search_params = models.SearchParams(hnsw_ef=hnsw_ef) if url else None
            self._client = client
        elif url is not None:
            self.name = "qdrant-server"
            self.where = redact_url(url)  # logs and messages never show a password
            # local mode is brute force and warns on search params, so only the server gets them
            self._search_params = models.SearchParams(hnsw_ef=hnsw_ef)
            self._client = QdrantClient(
                url=url,
                api_key=api_key,
                timeout=max(1, int(np.ceil(timeout_s))),
                check_compatibility=False,
            )
        else:
            self.name = "qdrant-client-local"
            self._search_params = None
            self.where = str(path) if path is not None else str(location)
            if path is not None:
                Path(path).mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(
                location=location, path=str(path) if path is not None else None
            )
        self._reconnect = Reconnector(
            f"Qdrant at {self.where}", lambda: self._ensure_collection(hnsw_m, ef_construct)
        )
        try:
            self._ensure_collection(hnsw_m, ef_construct)
        except RetrievalError as e:
            if not reconnect or not _transient(e.__cause__ or e):
                raise  # e.g. a collection of the wrong width: a deployment mistake
            self._reconnect.start(e)
        else:
            self._reconnect.mark_connected()

    # ------------------------------------------------------------------ plumbing
    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with tenacity retries on transient errors; RetrievalError otherwise."""

        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "qdrant %s failed (%s); retry %d in %.2fs",
                what,
                exc,
                state.attempt_number,
                state.upcoming_sleep,
            )

        try:
            return Retrying(
                retry=retry_if_exception(_transient),
                stop=stop_after_attempt(self.retries + 1),
                wait=wait_exponential(multiplier=self.backoff_s, max=5.0),
                before_sleep=note,
                reraise=True,
            )(fn)
        except Exception as e:
            raise RetrievalError(f"qdrant {what} at {self.where} failed: {e}") from e

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        if not self._reconnect.connected:
            _, reason = self._reconnect.status()
            raise RetrievalError(reason or f"Qdrant at {self.where} is not connected")
        try:
            out = self._attempt(what, fn)
        except RetrievalError as e:
            self._last_error = str(e)
            raise
        self._last_error = None
        return out

    def status(self) -> tuple[bool, str | None]:
        """(True, None) when connected and the last call worked, else (False, why)."""
        ok, reason = self._reconnect.status()
        if not ok:
            return ok, reason
        if self._last_error is not None:
            return False, self._last_error
        return True, None

    def _ensure_collection(self, hnsw_m: int, ef_construct: int) -> None:
        m = self._m
        if self._attempt(
            "collection_exists", lambda: self._client.collection_exists(self.collection)
        ):
            info = self._attempt(
                "get_collection", lambda: self._client.get_collection(self.collection)
            )
            size = info.config.params.vectors.size  # type: ignore[union-attr]
            if size != self.dim:
                raise RetrievalError(
                    f"collection {self.collection!r} at {self.where} has vectors of width {size}, "
                    f"the model's embeddings have width {self.dim}"
                )
            return
        self._attempt(
            "create_collection",
            lambda: self._client.create_collection(
                self.collection,
                vectors_config=m.VectorParams(size=self.dim, distance=m.Distance.COSINE),
                hnsw_config=m.HnswConfigDiff(m=hnsw_m, ef_construct=ef_construct),
            ),
        )

    # ------------------------------------------------------------------ interface
    def _upsert(self, ids: Sequence[str], x: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        pts = [
            self._m.PointStruct(id=i, vector=v.tolist(), payload=dict(p))
            for i, v, p in zip(ids, x, payloads)
        ]
        self._call("upsert", lambda: self._client.upsert(self.collection, points=pts, wait=True))

    def _search(self, x: np.ndarray, ks: list[int], ex: list[frozenset[str]]) -> list[list[Neighbour]]:
        m = self._m
        reqs = [
            m.QueryRequest(
                query=v.tolist(),
                limit=kk,
                with_payload=["caption"],
                params=self._search_params,
                filter=m.Filter(must_not=[m.HasIdCondition(has_id=sorted(e))]) if e else None,
            )
            for v, kk, e in zip(x, ks, ex)
        ]
        if not reqs:
            return []
        res = self._call(
            "query", lambda: self._client.query_batch_points(self.collection, requests=reqs)
        )
        return [
            [
                Neighbour(str(p.id), str((p.payload or {}).get("caption", "")), float(p.score))
                for p in r.points
            ]
            for r in res
        ]

    def count(self) -> int:
        return int(
            self._call("count", lambda: self._client.count(self.collection, exact=True)).count
        )

    def _retrieve(self, ids: Sequence[str], payload: bool) -> list[Any]:
        return self._call(
            "retrieve",
            lambda: self._client.retrieve(
                self.collection, ids=list(ids), with_payload=payload, with_vectors=False
            ),
        )

    def contains(self, ids: Sequence[str]) -> list[bool]:
        if not ids:
            return []
        found = {str(r.id) for r in self._retrieve(ids, False)}
        return [i in found for i in ids]

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        return {str(r.id): dict(r.payload or {}) for r in self._retrieve(ids, True)}

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        recs = self._call(
            "retrieve",
            lambda: self._client.retrieve(
                self.collection, ids=list(ids), with_payload=False, with_vectors=True
            ),
        )
        return {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in recs}

    def close(self) -> None:
        self._reconnect.stop()
        try:
            self._client.close()
        except Exception as e:  # noqa: BLE001 - closing must not mask the caller's error
            log.debug("qdrant client close: %s", e)
