"""Shutdown under load: one deadline for the whole shutdown. Past DRAIN_TIMEOUT_S every
request still waiting, running or being encoded gets a JSON 503 ``draining`` (never a
500, no uvicorn ERROR) and the process has exited by DRAIN_TIMEOUT_S after SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
from service_servers import Server


def test_drain_past_its_limit_answers_503_and_exits_on_time(tmp_path: Path) -> None:
    drain_s = 2.0
    srv = Server(
        {
            "RAGTURBO_MAX_BATCH": "1",
            "RAGTURBO_MAX_WAIT_MS": "0",
            "RAGTURBO_MAX_QUEUE": "64",
            "RAGTURBO_DRAIN_TIMEOUT_S": str(drain_s),
            "RAGTURBO_REQUEST_TIMEOUT_S": "60",
            "RAGTURBO_MODEL_DIR": "/unused",
        },
        "fake",
        tmp_path,
        batch_s=0.1,  # a request of 4 images takes 0.4 s: 40 of them are 16 s of work
    )
    try:
        srv.wait_ready()
        url = f"{srv.url}/generate"
        results: list[httpx.Response | Exception] = []
        lock = threading.Lock()

        def call(i: int) -> None:
            try:
                r: httpx.Response | Exception = httpx.post(
                    url, json={"prompt": f"p{i}", "num_images": 4, "seed": i}, timeout=30
                )
            except Exception as e:  # noqa: BLE001 — a lost request is what we look for
                r = e
            with lock:
                results.append(r)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        t_term = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
        took = time.monotonic() - t_term
        for t in threads:
            t.join(30)
        assert code == 0, srv.logs()
        print(f"exit {took:.2f}s after SIGTERM (limit {drain_s}s)")
        assert took <= drain_s + 0.1, f"exit took {took:.2f}s after SIGTERM"
        assert len(results) == 40
        assert all(isinstance(r, httpx.Response) for r in results), results
        codes = [r.status_code for r in results]  # type: ignore[union-attr]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(200) >= 3 and codes.count(503) >= 1, codes
        for r in results:
            assert isinstance(r, httpx.Response)
            if r.status_code == 200:
                assert len(r.json()["images"]) == 4
            else:
                assert r.headers["content-type"] == "application/json"
                assert r.json()["error"]["code"] == "draining", r.text
        assert "Internal Server Error" not in srv.logs()
    finally:
        srv.stop()


def test_an_encode_outliving_the_deadline_is_answered_503_and_exit_is_on_time(tmp_path: Path) -> None:
    drain_s = 1.0
    srv = Server(
        {"RAGTURBO_DRAIN_TIMEOUT_S": str(drain_s), "RAGTURBO_MODEL_DIR": "/unused",
         "RAGTURBO_MAX_BODY_BYTES": "1048576"},
        "fake",
        tmp_path,
        noise_res=1024,  # 8 noise PNGs of 1024 px: seconds of encoding, past the deadline
    )
    try:
        srv.wait_ready()
        out: list[httpx.Response] = []
        t = threading.Thread(target=lambda: out.append(httpx.post(
            f"{srv.url}/generate", json={"prompt": "big", "num_images": 8}, timeout=30)))
        t.start()
        time.sleep(0.3)  # the batch is done, the encode is running
        t_term = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
        took = time.monotonic() - t_term
        t.join(30)
        logs = srv.logs()
        assert code == 0, logs
        print(f"exit {took:.2f}s after SIGTERM (limit {drain_s}s)")
        assert took <= drain_s + 0.1, f"exit took {took:.2f}s after SIGTERM"
        assert out and out[0].status_code == 503, out
        assert out[0].json()["error"]["code"] == "draining"
        assert "ERROR" not in logs and '"level": "ERROR"' not in logs, logs[-3000:]
    finally:
        srv.stop()
