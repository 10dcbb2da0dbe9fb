"""The dynamic batcher on its own: packing, splitting, buckets, admission, dropping."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_fakes import FakeT2I

from retrieval.compose import ImageRequest
from service.batcher import Batcher
from service.errors import DeadlineExceeded, QueueFull
from service.metrics import Metrics


def _reqs(prompt: str, n: int, seed: int = 0, mode: str = "adapter", k: int = 1) -> list:
    return [ImageRequest(prompt=prompt, seed=seed + i, mode=mode, k=k) for i in range(n)]  # type: ignore[arg-type]


async def _with_batcher(t2i: FakeT2I, body, **kw):  # type: ignore[no-untyped-def]
    pool = ThreadPoolExecutor(1)
    metrics = Metrics()
    b = Batcher(
        t2i.generate, pool, metrics, **{"max_batch": 8, "max_wait_ms": 50, "max_queue": 16, **kw}
    )
    b.start()
    try:
        return await body(b, metrics)
    finally:
        await b.stop(5)
        pool.shutdown()


def test_requests_of_different_clients_share_a_batch_and_get_their_own_images() -> None:
    t2i = FakeT2I()
    jobs_spec = [
        ("a red circle", 1, 5, "adapter", 2),
        ("a blue square", 3, 9, "off", 1),
        ("a green circle", 2, 0, "inject", 1),
    ]

    async def body(b: Batcher, m: Metrics):  # type: ignore[no-untyped-def]
        jobs = [
            b.submit(_reqs(p, n, s, mo, k), time.monotonic() + 5) for p, n, s, mo, k in jobs_spec
        ]
        return [await j.future for j in jobs]

    got = asyncio.run(_with_batcher(t2i, body))
    assert t2i.batches == [6]  # one pipeline call for three clients
    alone = FakeT2I()
    for res, (p, n, s, mo, k) in zip(got, jobs_spec):
        ref, _ = alone.generate(_reqs(p, n, s, mo, k))
        assert [r.seed for r in res.results] == [s + i for i in range(n)]
        assert all((a.image == b.image).all() for a, b in zip(res.results, ref))
        assert [r.retrieval_status for r in res.results] == [r.retrieval_status for r in ref]
        assert res.batch_images == 6


def test_num_images_counts_against_max_batch_and_big_jobs_run_in_chunks() -> None:
    t2i = FakeT2I()

    async def body(b: Batcher, m: Metrics):  # type: ignore[no-untyped-def]
        jobs = [b.submit(_reqs("x", n), time.monotonic() + 5) for n in (3, 3, 6)]
        return [len((await j.future).results) for j in jobs]

    assert asyncio.run(_with_batcher(t2i, body, max_batch=4)) == [3, 3, 6]
    # 3 | 3 | 6 -> chunks of 4 and 2: no batch exceeds max_batch, no job is split across
    assert t2i.batches == [3, 3, 4, 2]


def test_batches_are_padded_to_the_engine_buckets() -> None:
    t2i = FakeT2I()
    buckets = [1, 4, 8]

    async def body(b: Batcher, m: Metrics):  # type: ignore[no-untyped-def]
        jobs = [b.submit(_reqs(f"p{i}", 1), time.monotonic() + 5) for i in range(3)]
        return [(await j.future).results[0].seed for j in jobs]

    got = asyncio.run(
        _with_batcher(t2i, body, bucket_for=lambda n: next(x for x in buckets if x >= n))
    )
    assert got == [0, 0, 0] and t2i.batches == [4]  # 3 real + 1 dummy


def test_full_queue_is_refused_and_counted_in_the_same_step() -> None:
    t2i = FakeT2I(batch_s=0.3)

    async def body(b: Batcher, m: Metrics):  # type: ignore[no-untyped-def]
        first = b.submit(_reqs("busy", 1), time.monotonic() + 5)
        await asyncio.sleep(0.05)  # now running; the queue is empty
        queued = [b.submit(_reqs("q", 1), time.monotonic() + 5) for _ in range(2)]
        with pytest.raises(QueueFull) as e:
            b.submit(_reqs("late", 1), time.monotonic() + 5)
        assert e.value.status == 429 and int(e.value.headers()["Retry-After"]) >= 1
        assert m.rejected.labels(reason="queue_full")._value.get() == 1
        assert m.queue_depth._value.get() == 2
        await asyncio.gather(first.future, *(j.future for j in queued))

    asyncio.run(_with_batcher(t2i, body, max_queue=2, max_batch=1, max_wait_ms=0))
    assert t2i.batches == [1, 1, 1]


def test_expired_or_abandoned_jobs_cost_no_pipeline_work() -> None:
    t2i = FakeT2I(batch_s=0.3)

    async def body(b: Batcher, m: Metrics):  # type: ignore[no-untyped-def]
        busy = b.submit(_reqs("busy", 1), time.monotonic() + 5)
        await asyncio.sleep(0.05)
        expires = b.submit(_reqs("expires", 1), time.monotonic() + 0.1)
        gone = b.submit(_reqs("gone", 1), time.monotonic() + 5)
        assert b.abandon(gone, "disconnected") is True
        await busy.future
        with pytest.raises(DeadlineExceeded):
            await expires.future
        assert b.abandon(busy, "timeout") is False  # already ran
        assert m.rejected.labels(reason="timeout")._value.get() == 1
        assert m.rejected.labels(reason="disconnected")._value.get() == 1

    asyncio.run(_with_batcher(t2i, body, max_batch=1, max_wait_ms=0))
    assert t2i.batches == [1]


def test_a_pipeline_error_fails_only_its_batch() -> None:
    t2i = FakeT2I(fail_on="boom")

    async def body(b: Batcher, m: Metrics):  # type: ignore[no-untyped-def]
        bad = b.submit(_reqs("boom", 1), time.monotonic() + 5)
        with pytest.raises(RuntimeError):
            await bad.future
        ok = b.submit(_reqs("fine", 1), time.monotonic() + 5)
        return len((await ok.future).results)

    assert asyncio.run(_with_batcher(t2i, body, max_batch=1, max_wait_ms=0)) == 1
