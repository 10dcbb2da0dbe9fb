"""The service's runtime state: engine lifecycle (starting -> ready | failed -> draining),
the batcher, thread pools, in-flight accounting, and the retrieval status.

Engine faults: a batch that raises fails only its own requests (500); the
batcher then awaits ``after_batch_error``, which runs a real forward pass on the model
worker (as TGI's health check does). If that fails too the engine is broken: the service
turns ``failed`` (``/readyz`` 503), ``/healthz`` answers 503 so the orchestrator restarts
the process, and every waiting request gets 503.

Retrieval status: ``retrieval_status(ok, reason)`` is the push API for the
code that owns the index (the engine/compose layer calls it when the index goes away or
comes back); ``retrieval_probe`` is the pull variant, read by ``/readyz`` and
``/metrics``. Either way ``/readyz`` stays 200 (generation works without retrieval) but
says ``"retrieval": "degraded"`` with the reason, and ``ragturbo_retrieval_available`` is 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from service.batcher import Batcher
from service.errors import NotReady, ServiceError
from service.metrics import Metrics
from service.seam import EngineFactory, TextToImageLike, retrieval_probe_for
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
RetrievalProbe = Callable[[], tuple[bool, "str | None"]]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragturbo")
    except PackageNotFoundError:
        return "0+unknown"


def _process_age_s() -> str:
    """Seconds since this process started (imports included), from /proc; "?" elsewhere."""
    from pathlib import Path

    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        up = float(Path("/proc/uptime").read_text().split()[0])
        return f"{up - start / os.sysconf('SC_CLK_TCK'):.1f}"
    except (OSError, ValueError, IndexError):
        return "?"


@dataclass(eq=False)
class ServiceState:
    settings: Settings
    metrics: Metrics
    factory: EngineFactory
    status: str = "starting"  # starting | ready | failed | draining
    detail: str = ""
    t2i: TextToImageLike | None = None
    batcher: Batcher | None = None
    inflight: int = 0
    engine_broken: bool = False
    retrieval_ok: bool | None = None  # None: not known (no index behind this engine)
    retrieval_reason: str | None = None
    retrieval_probe: RetrievalProbe | None = None
    gpu_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="ragturbo-gpu")
    )
    encode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            min(4, os.cpu_count() or 1), thread_name_prefix="ragturbo-encode"
        )
    )
    _init_task: asyncio.Task[None] | None = None
    _drain_expired: asyncio.Event | None = None
    _drain_error: ServiceError | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def start(self) -> None:
        self._drain_expired = asyncio.Event()
        self._init_task = asyncio.get_running_loop().create_task(self._init(), name="engine-init")

    def _warm_up(self, t2i: TextToImageLike, n: int, mode: str = "adapter") -> None:
        """Worker thread: one real generation of ``n`` images (raises if it fails)."""
        from engines.request import ImageRequest

        reqs = [ImageRequest("warm-up", i, mode) for i in range(n)]  # type: ignore[arg-type]
        results, _ = t2i.generate(reqs)
        if len(results) != n:
            raise RuntimeError(f"warm-up returned {len(results)} results for {n}")

    async def _init(self) -> None:
        """Build the engine on the worker thread (backends may be thread-affine), run a real
        warm-up generation, then open for traffic."""
        s = self.settings
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            t2i = await loop.run_in_executor(self.gpu_pool, self.factory, s)
            # graph backends compile/capture per batch size on CUDA; on the CPU nothing is captured
            for n in [1] if s.device == "cpu" else sorted({1, s.bucket_for(s.max_batch)}):
                await loop.run_in_executor(self.gpu_pool, self._warm_up, t2i, n)
        except Exception as e:
            self.status = "failed"
            self.detail = f"backend {s.backend!r} failed to start"
            log.exception("engine failed to start (backend=%s); service stays NOT ready", s.backend)
            self.metrics.set_build_info(_version(), s.backend, f"failed:{type(e).__name__}")
            return
        self.t2i = t2i
        if self.retrieval_probe is None:
            self.retrieval_probe = retrieval_probe_for(t2i)
        self.refresh_retrieval()
        self.metrics.set_build_info(_version(), t2i.backend_name, t2i.model_name)
        self.batcher = Batcher(
            t2i.generate,
            self.gpu_pool,
            self.metrics,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            bucket_for=s.bucket_for,
            on_error=self.after_batch_error,
        )
        self.batcher.start()
        if self.status == "starting":
            self.status = "ready"
        log.info(
            "ready: backend=%s model=%s device=%s resolution=%d warm-up %.0f ms "
            "(max_batch=%d max_wait_ms=%g buckets=%s); %s s after the process started",
            t2i.backend_name,
            t2i.model_name,
            s.device,
            t2i.resolution,
            (time.perf_counter() - t0) * 1000,
            s.max_batch,
            s.max_wait_ms,
            s.batch_buckets or "none",
            _process_age_s(),
        )

    # ------------------------------------------------------------------ engine faults
    async def after_batch_error(self, exc: BaseException) -> None:
        """A batch raised: check the engine with a real forward pass before the next one."""
        if self.t2i is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.gpu_pool, self._warm_up, self.t2i, 1, "off")
        except Exception as e:
            self.engine_broken = True
            if self.status != "draining":
                self.status = "failed"
            self.detail = (
                f"engine failed its health check after a batch error ({type(exc).__name__}, "
                f"then {type(e).__name__})"
            )
            log.exception("engine health check failed: service NOT ready; restart needed")
            if self.batcher is not None:
                self.batcher.fail_pending(
                    NotReady("the engine failed; this replica is not ready", code="failed"),
                    "engine_failed",
                )
            return
        log.warning(
            "health check passed after a failed batch (%s): engine still serves",
            type(exc).__name__,
        )

    # ------------------------------------------------------------------ retrieval status
    def retrieval_status(self, ok: bool, reason: str | None = None) -> None:
        """Push API: the index is usable (``ok``) or not (``reason`` says why)."""
        if ok != self.retrieval_ok:
            if ok:
                log.info("retrieval available again")
            else:
                log.warning("retrieval degraded: %s", reason or "unknown reason")
        self.retrieval_ok = ok
        # ok: where the search runs (e.g. "inside the fast graph over N pairs (synthetic)")
        self.retrieval_reason = reason if ok else (reason or "unknown reason")
        self.metrics.retrieval_available.set(1 if ok else 0)

    def refresh_retrieval(self) -> None:
        """Pull the probe (cheap: it reads the index's connection state, no I/O)."""
        if self.retrieval_probe is None:
            return
        try:
            ok, reason = self.retrieval_probe()
        except Exception as e:  # noqa: BLE001 - a probe bug must not break /readyz
            ok, reason = False, f"retrieval probe failed: {type(e).__name__}: {e}"
        self.retrieval_status(ok, reason)

    # ------------------------------------------------------------------ drain
    @contextmanager
    def track(self) -> Iterator[None]:
        """Counts a request handler from entry to its response body: what a drain waits for."""
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def begin_drain(self) -> None:
        if self.status != "draining":
            log.info("draining: no new requests; %d in flight", self.inflight)
            self.status = "draining"
            self.detail = "draining"

    async def wait_drained(self, timeout_s: float) -> bool:
        """True when every accepted request has been answered within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.inflight == 0

    def fail_pending(self, err: ServiceError) -> int:
        """At the drain deadline: every request still waiting, running or being encoded
        gets ``err`` (those encoding: through ``unless_drain_expired``)."""
        self._drain_error = err
        if self._drain_expired is not None:
            self._drain_expired.set()
        if self.batcher is None:
            return 0
        return self.batcher.fail_pending(err, "drain_timeout")

    async def unless_drain_expired(self, aw: Awaitable[T]) -> T:
        """``await aw``, unless the drain deadline comes first: then raise its 503 (the
        work, e.g. an image encode on a worker thread, finishes unobserved)."""
        fut = asyncio.ensure_future(aw)
        if self._drain_expired is None:
            return await fut
        waiter = asyncio.ensure_future(self._drain_expired.wait())
        try:
            await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if fut.done():
            return fut.result()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        self.metrics.rejected.labels(reason="drain_timeout").inc()
        raise self._drain_error or NotReady("service is shutting down", code="draining")

    async def close(self) -> None:
        """Lifespan shutdown. The drain (service.server) already waited; nothing waits
        here again: whatever is still queued is answered 503 draining."""
        if self._init_task is not None and not self._init_task.done():
            self._init_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(0.0)
        self.gpu_pool.shutdown(wait=False, cancel_futures=True)
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
