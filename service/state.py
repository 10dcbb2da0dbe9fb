"""The service's runtime state: engine lifecycle (starting -> ready | failed -> draining),
the batcher, thread pools and in-flight accounting. Created in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.batcher import Batcher
from service.engine import EngineFactory, TextToImageLike
from service.errors import ServiceError
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragturbo")
    except PackageNotFoundError:
        return "0+unknown"


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
    gpu_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="ragturbo-gpu")
    )
    encode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            min(4, os.cpu_count() or 1), thread_name_prefix="ragturbo-encode"
        )
    )
    _init_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def start(self) -> None:
        self._init_task = asyncio.get_running_loop().create_task(self._init(), name="engine-init")

    async def _init(self) -> None:
        """Build the engine on the worker thread (backends may be thread-affine), run a real
        warm-up generation, then open for traffic."""
        s = self.settings
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            t2i = await loop.run_in_executor(self.gpu_pool, self.factory, s)
            from service.engine import gen_request

            sizes = sorted({1, s.bucket_for(s.max_batch)})
            for n in sizes:
                reqs = [gen_request("warm-up", i, "adapter", 1) for i in range(n)]
                results, _ = await loop.run_in_executor(self.gpu_pool, t2i.generate, reqs)
                if len(results) != n:
                    raise RuntimeError(f"warm-up returned {len(results)} results for {n}")
        except Exception as e:
            self.status = "failed"
            self.detail = f"backend {s.backend!r} failed to start"
            log.exception("engine failed to start (backend=%s); service stays NOT ready", s.backend)
            self.metrics.set_build_info(_version(), s.backend, f"failed:{type(e).__name__}")
            return
        self.t2i = t2i
        self.metrics.set_build_info(_version(), t2i.backend_name, t2i.model_name)
        self.batcher = Batcher(
            t2i.generate,
            self.gpu_pool,
            self.metrics,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            bucket_for=s.bucket_for,
        )
        self.batcher.start()
        if self.status == "starting":
            self.status = "ready"
        log.info(
            "ready: backend=%s model=%s device=%s resolution=%d warm-up %.0f ms "
            "(max_batch=%d max_wait_ms=%g buckets=%s)",
            t2i.backend_name,
            t2i.model_name,
            s.device,
            t2i.resolution,
            (time.perf_counter() - t0) * 1000,
            s.max_batch,
            s.max_wait_ms,
            s.batch_buckets or "none",
        )

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
        """At the drain deadline: every request still waiting or running gets ``err``."""
        if self.batcher is None:
            return 0
        return self.batcher.fail_pending(err, "drain_timeout")

    async def close(self) -> None:
        """Lifespan shutdown. The drain (service.server) already waited; nothing waits
        here again: whatever is still queued is answered 503 draining."""
        if self._init_task is not None and not self._init_task.done():
            self._init_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(0.0)
        self.gpu_pool.shutdown(wait=False, cancel_futures=True)
        self.encode_pool.shutdown(wait=False, cancel_futures=True)
