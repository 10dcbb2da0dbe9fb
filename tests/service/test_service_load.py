"""Admission under real HTTP load: overload gives 429s while every accepted request
completes; a client that disconnects while queued costs no pipeline work; SIGTERM drains
without losing an accepted request."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service_servers import Server, metric_value


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Fake engine: 250 ms per batch of at most 2 images, at most 3 requests waiting."""
    srv = Server(
        {
            "RAGTURBO_MAX_BATCH": "2",
            "RAGTURBO_MAX_WAIT_MS": "1",
            "RAGTURBO_MAX_QUEUE": "3",
            "RAGTURBO_MODEL_DIR": "/unused",
        },
        "fake",
        tmp_path_factory.mktemp("slow-server"),
        batch_s=0.25,
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_overload_gives_429_and_every_accepted_request_completes(slow_server: Server) -> None:
    before = slow_server.metrics()
    n = 24
    with ThreadPoolExecutor(n) as pool:
        rs = list(
            pool.map(
                lambda i: httpx.post(
                    f"{slow_server.url}/generate", timeout=30, json={"prompt": f"p{i}", "seed": i}
                ),
                range(n),
            )
        )
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= 3
    for r in rs:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
        else:
            assert r.json()["images"][0]["seed"] == int(r.json()["images"][0]["seed"])
    after = slow_server.metrics()
    refused = metric_value(after, "ragturbo_rejected_total", reason="queue_full") - metric_value(
        before, "ragturbo_rejected_total", reason="queue_full"
    )
    assert refused == codes.count(429)
    served = metric_value(after, "ragturbo_images_generated_total") - metric_value(
        before, "ragturbo_images_generated_total"
    )
    assert served == codes.count(200)
    assert metric_value(after, "ragturbo_queue_depth") == 0


def test_disconnected_client_costs_no_pipeline_work(slow_server: Server) -> None:
    before = slow_server.metrics()
    url = f"{slow_server.url}/generate"
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(httpx.post, url, json={"prompt": "busy", "num_images": 2}, timeout=30)
        time.sleep(0.08)  # the busy batch is running; the next request waits in the queue
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"prompt": "impatient"}, timeout=0.1)
        assert busy.result().status_code == 200
    time.sleep(0.4)
    after = slow_server.metrics()
    batches = metric_value(after, "ragturbo_batch_size_count") - metric_value(
        before, "ragturbo_batch_size_count"
    )
    assert batches == 1  # only "busy" ran
    gone = metric_value(after, "ragturbo_rejected_total", reason="disconnected") - metric_value(
        before, "ragturbo_rejected_total", reason="disconnected"
    )
    assert gone == 1


def test_sigterm_drains_every_accepted_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    srv = Server(
        {
            "RAGTURBO_MODEL_DIR": str(tiny_model_dir),
            "RAGTURBO_MAX_BATCH": "2",
            "RAGTURBO_MAX_WAIT_MS": "1",
            "RAGTURBO_MAX_QUEUE": "64",
            "RAGTURBO_DRAIN_TIMEOUT_S": "60",
        },
        "real",
        tmp_path,
    )
    try:
        srv.wait_ready()
        url = f"{srv.url}/generate"
        n = 10
        results: list[httpx.Response | Exception] = []
        lock = threading.Lock()

        def call(i: int) -> None:
            try:
                r = httpx.post(
                    url, json={"prompt": f"shape {i}", "num_images": 4, "seed": i}, timeout=60
                )
            except Exception as e:  # noqa: BLE001 — a lost request is what we look for
                r = e  # type: ignore[assignment]
            with lock:
                results.append(r)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        # Wait until several jobs wait in the queue (one runs: 4 images > max_batch 2 runs
        # alone), then ask the process to stop. On a fast machine some requests may finish
        # or arrive after the signal; what matters is that every accepted one is answered.
        deadline = time.monotonic() + 20
        queued = 0
        while queued < 3:
            assert time.monotonic() < deadline, "requests were not queued"
            queued = int(metric_value(srv.metrics(), "ragturbo_queue_depth"))
            time.sleep(0.005)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = httpx.get(f"{srv.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
        late = httpx.post(url, json={"prompt": "too late"}, timeout=5)
        assert late.status_code == 503
        for t in threads:
            t.join(60)
        assert srv.proc.wait(60) == 0
        assert len(results) == n
        # Nothing is lost: each request was answered, either with its images (accepted
        # before the signal) or with 503 "draining" (it arrived after); none errored.
        assert all(isinstance(r, httpx.Response) for r in results), results
        ok = [r for r in results if r.status_code == 200]  # type: ignore[union-attr]
        late_ones = [r for r in results if r.status_code != 200]  # type: ignore[union-attr]
        assert all(r.status_code == 503 and r.json()["error"]["code"] == "draining"  # type: ignore[union-attr]
                   for r in late_ones), late_ones
        assert len(ok) >= queued + 1  # the running job and every queued one were answered
        assert all(len(r.json()["images"]) == 4 for r in ok)
        assert "drained: every accepted request answered" in srv.logs()
    finally:
        srv.stop()
