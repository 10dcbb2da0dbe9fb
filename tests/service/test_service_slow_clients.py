"""Slow clients (issue 14.5): a request head or body that does not arrive in time gets a
408 envelope and the connection is closed; trickling bytes does not extend the limit.
Raw sockets against a real server process on loopback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from service_servers import Server


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        {
            "RAGTURBO_HEADER_TIMEOUT_S": "1",
            "RAGTURBO_BODY_TIMEOUT_S": "1",
            "RAGTURBO_MODEL_DIR": "/unused",
        },
        "fake",
        tmp_path_factory.mktemp("strict-server"),
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _connect(srv: Server) -> socket.socket:
    u = urlparse(srv.url)
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    return s


def _read_all(s: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``limit_s`` passes (False)."""
    s.settimeout(0.1)
    data = b""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_unfinished_heads_and_bodies_are_timed_out(strict_server: Server) -> None:
    heads = [_connect(strict_server) for _ in range(5)]
    bodies = [_connect(strict_server) for _ in range(5)]
    silent = _connect(strict_server)
    body = json.dumps({"prompt": "a red circle"}).encode()
    for s in heads:
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for s in bodies:
        s.sendall(
            b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body[:5])
        )
    # Trickle a header byte every 0.3 s: each byte resets uvicorn's keep-alive timer, the
    # head deadline still holds.
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        for s in heads:
            try:
                s.sendall(b"X")
            except OSError:
                pass
        time.sleep(0.3)
    for s in heads + bodies:
        data, closed = _read_all(s, 3.0)
        assert closed, "connection still open"
        assert data.startswith(b"HTTP/1.1 408"), data[:100]
        payload = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert payload["error"]["code"] == "request_timeout"
        s.close()
    data, closed = _read_all(silent, 3.0)
    assert closed and data == b""  # never sent a byte: just closed
    silent.close()
    # A normal client is unaffected.
    r = httpx.post(f"{strict_server.url}/generate", json={"prompt": "fine"}, timeout=10)
    assert r.status_code == 200


def test_a_slow_response_is_not_a_slow_client(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The deadlines cover reading the request only: a response that takes longer than
    both (the model is busy) is still delivered."""
    srv = Server(
        {
            "RAGTURBO_HEADER_TIMEOUT_S": "0.5",
            "RAGTURBO_BODY_TIMEOUT_S": "0.5",
            "RAGTURBO_MODEL_DIR": "/unused",
        },
        "fake",
        tmp_path_factory.mktemp("slow-response"),
        batch_s=1.2,
    )
    try:
        srv.wait_ready()
        with httpx.Client(timeout=10) as c:  # keep-alive: the second request reuses it
            for i in range(2):
                r = c.post(f"{srv.url}/generate", json={"prompt": f"slow {i}"})
                assert r.status_code == 200, r.text
    finally:
        srv.stop()
