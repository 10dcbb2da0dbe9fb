"""Dynamic batcher: packs requests of different clients into one pipeline call.

Contract: ``submit`` admits a job (a request's images, as a list of ``ImageRequest``) or
raises ``QueueFull`` — the bound is checked and the rejection counted in the same step,
with no ``await`` in between. One collector task forms batches in arrival order: when
the model worker is idle the waiting jobs run at once (up to ``max_batch`` images; an
optional ``max_wait_ms`` window may hold an idle worker back for company); while it is
busy, arrivals gather and the next batch takes up to ``max_batch`` images of them the
moment the worker is free. A job is never split across batches; a job larger than
``max_batch`` runs alone, in chunks of ``max_batch``. With batch buckets, each chunk is padded with
copies of its last request (dummy work whose results are dropped) up to the next
bucket size. The pipeline runs on one dedicated worker thread, never on the event loop.
Each job's future gets exactly its own results, in its own order.

Jobs that are dropped before they start (deadline passed, client gone) cost no
pipeline work. ``fail_pending`` answers every job not yet answered with one error (the
shutdown deadline). When a batch raises, only its jobs fail; then ``on_error`` (e.g. a
health check with a real forward pass) runs before the next batch. Every job future has
its exception marked as retrieved, so a job nobody awaits any more (504, disconnect)
logs no "Future exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.errors import DeadlineExceeded, QueueFull, ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)

RunFn = Callable[[Sequence[Any]], tuple[list[Any], dict[str, float]]]
OnError = Callable[[BaseException], Awaitable[None]]


def _mark_retrieved(fut: asyncio.Future[Any]) -> None:
    # The caller may have stopped waiting (504, disconnect); reading the exception here
    # keeps asyncio from logging an ERROR for every dropped job.
    if not fut.cancelled():
        fut.exception()


@dataclass
class JobResult:
    results: list[Any]
    timings_ms: dict[str, float]
    queue_s: float
    batch_images: int


@dataclass(eq=False)
class Job:
    reqs: list[Any]
    deadline: float  # time.monotonic()
    future: asyncio.Future[JobResult]
    enqueued: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued -> running -> done | dropped

    @property
    def n(self) -> int:
        return len(self.reqs)


class Batcher:
    """See the module docstring. Create inside a running event loop; ``start()`` it."""

    def __init__(
        self,
        run: RunFn,
        executor: ThreadPoolExecutor,
        metrics: Metrics,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        bucket_for: Callable[[int], int] = lambda n: n,
        on_error: OnError | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"need max_batch>=1, max_queue>=1, max_wait_ms>=0; got {max_batch}, "
                f"{max_queue}, {max_wait_ms}"
            )
        self._run = run
        self._executor = executor
        self._metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._bucket_for = bucket_for
        self._queue: collections.deque[Job] = collections.deque()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: list[Job] = []  # jobs in the batch on the worker thread
        self._on_error = on_error
        self._batch_s_ema = 0.05  # for Retry-After; refined by every batch

    # ------------------------------------------------------------------ admission
    def submit(self, reqs: list[Any], deadline: float) -> Job:
        """Admit a job or raise QueueFull (counted here, in the same step as the check)."""
        if len(self._queue) >= self.max_queue:
            self._metrics.rejected.labels(reason="queue_full").inc()
            raise QueueFull(
                f"queue full ({self.max_queue} requests waiting); retry later",
                retry_after_s=self.retry_after_s(),
            )
        job = Job(
            reqs=list(reqs), deadline=deadline, future=asyncio.get_running_loop().create_future()
        )
        job.future.add_done_callback(_mark_retrieved)
        self._queue.append(job)
        self._metrics.queue_depth.set(len(self._queue))
        self._changed.set()
        return job

    def abandon(self, job: Job, reason: str) -> bool:
        """The caller no longer wants ``job`` (deadline, disconnect). Returns True if it was
        still queued: then it is removed and no pipeline work is spent on it."""
        if job.state != "queued":
            return False
        self._drop(job, reason)
        return True

    def retry_after_s(self) -> int:
        batches_ahead = math.ceil((len(self._queue) + 1) / self.max_batch)
        return max(1, math.ceil(batches_ahead * self._batch_s_ema))

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    def fail_pending(self, err: ServiceError, reason: str) -> int:
        """Answer every job not answered yet (queued or running) with ``err``; queued ones
        never run, a running batch's results are dropped. Returns how many were failed."""
        pending = [j for j in (*self._queue, *self._running) if not j.future.done()]
        for job in pending:
            self._drop(job, reason, err)
        return len(pending)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self, timeout_s: float) -> None:
        """Finish what is queued (up to ``timeout_s``), then stop the collector; jobs still
        waiting then get a 503 ``draining``."""
        from service.errors import NotReady

        deadline = time.monotonic() + timeout_s
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # Before the collector is cancelled: it forgets its running batch when it stops.
        self.fail_pending(NotReady("service is shutting down", code="draining"), "drain_timeout")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # ------------------------------------------------------------------ internals
    def _drop(self, job: Job, reason: str, err: ServiceError | None = None) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(job)
        job.state = "dropped"
        self._metrics.queue_depth.set(len(self._queue))
        self._metrics.rejected.labels(reason=reason).inc()
        if not job.future.done():
            job.future.set_exception(
                err or DeadlineExceeded("request deadline passed before it could run")
            )

    def _queued_images(self) -> int:
        return sum(j.n for j in self._queue)

    def _take(self) -> list[Job]:
        """Pop the next batch in arrival order, dropping jobs whose deadline passed."""
        now = time.monotonic()
        batch: list[Job] = []
        images = 0
        while self._queue:
            job = self._queue[0]
            if job.deadline <= now or job.future.done():
                self._drop(job, "timeout" if job.deadline <= now else "disconnected")
                continue
            if batch and images + job.n > self.max_batch:
                break
            self._queue.popleft()
            job.state = "running"
            batch.append(job)
            images += job.n
        self._metrics.queue_depth.set(len(self._queue))
        return batch

    async def _loop(self) -> None:
        # The worker is idle whenever this loop is not awaiting _execute: jobs that
        # arrived while a batch ran are taken together, at once.
        while True:
            if not self._queue:
                self._changed.clear()
                await self._changed.wait()
                continue
            wait_until = self._queue[0].enqueued + self.max_wait_s
            while self.max_wait_s > 0 and self._queue and self._queued_images() < self.max_batch:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                try:
                    await self._execute(batch)
                except Exception:  # a bug here must not kill the collector
                    log.exception("batch of %d jobs failed", len(batch))

    def _run_chunks(self, reqs: list[Any]) -> tuple[list[Any], dict[str, float]]:
        """Worker thread: run ``reqs`` in chunks of max_batch, each padded to its bucket."""
        results: list[Any] = []
        timings: dict[str, float] = {}
        for i in range(0, len(reqs), self.max_batch):
            chunk = reqs[i : i + self.max_batch]
            size = self._bucket_for(len(chunk))
            padded = chunk + [chunk[-1]] * (size - len(chunk))
            out, t = self._run(padded)
            if len(out) != len(padded):
                raise RuntimeError(f"pipeline returned {len(out)} results for {len(padded)}")
            results.extend(out[: len(chunk)])
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + float(v)
        return results, timings

    async def _execute(self, batch: list[Job]) -> None:
        start = time.monotonic()
        reqs = [r for job in batch for r in job.reqs]
        m = self._metrics
        m.batch_size.observe(len(reqs))
        for job in batch:
            m.queue_wait.observe(start - job.enqueued)
        self._running = batch
        try:
            loop = asyncio.get_running_loop()
            results, timings = await loop.run_in_executor(self._executor, self._run_chunks, reqs)
        except Exception as e:
            log.exception("pipeline failed on a batch of %d images", len(reqs))
            for job in batch:
                job.state = "done"
                if not job.future.done():
                    job.future.set_exception(e)
            self._running = []
            if self._on_error is not None:
                await self._on_error(e)  # before the next batch: is the engine still sound?
            return
        finally:
            self._running = []
        elapsed = time.monotonic() - start
        self._batch_s_ema = 0.8 * self._batch_s_ema + 0.2 * elapsed
        for stage in ("text", "retrieval", "unet", "vae"):
            if stage in timings:
                m.stage_duration.labels(stage=stage).observe(timings[stage] / 1000.0)
        pos = 0
        for job in batch:
            job.state = "done"
            mine = results[pos : pos + job.n]
            pos += job.n
            if not job.future.done():
                job.future.set_result(
                    JobResult(mine, dict(timings), start - job.enqueued, len(reqs))
                )
