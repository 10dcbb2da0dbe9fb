"""A response nobody reads is aborted within RAGTURBO_WRITE_TIMEOUT_S; a request whose
body timed out (408) or whose client hung up mid-body is not counted as a 500.
Raw sockets against a real server process on loopback."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from service_servers import Server, metric_value
from test_service_slow_clients import _read_all

BODY = json.dumps({"prompt": "a red circle", "num_images": 8}).encode()
REQUEST = (
    b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        {
            "RAGTURBO_HEADER_TIMEOUT_S": "1",
            "RAGTURBO_BODY_TIMEOUT_S": "1",
            "RAGTURBO_WRITE_TIMEOUT_S": "1",
            "RAGTURBO_MODEL_DIR": "/unused",
        },
        "fake",
        tmp_path_factory.mktemp("slow-readers"),
        noise_res=512,  # 8 noise PNGs: an ~8 MB response, more than the socket buffers hold
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _connect(srv: Server, rcvbuf: int | None = None) -> socket.socket:
    u = urlparse(srv.url)
    s = socket.socket()
    if rcvbuf is not None:  # a small window: the response backs up into the server
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((u.hostname, u.port))
    return s


def test_a_client_that_never_reads_is_disconnected(server: Server) -> None:
    full = httpx.post(f"{server.url}/generate", content=BODY, timeout=30,
                      headers={"content-type": "application/json"})
    assert full.status_code == 200 and len(full.content) > 1_000_000
    socks = [_connect(server, rcvbuf=4096) for _ in range(3)]
    for s in socks:
        s.sendall(REQUEST)
    time.sleep(5.0)  # write timeout 1 s, plus the time to make the images
    for s in socks:
        data, closed = _read_all(s, 3.0)
        s.close()
        assert closed and len(data) < len(full.content), len(data)  # aborted, not finished
    logs = server.logs()
    assert logs.count("response not read by the client within 1s; connection aborted") >= 3, logs[-2000:]
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_body_timeouts_and_hangups_are_not_counted_as_500(server: Server) -> None:
    before = server.metrics()
    head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(BODY))
    slow = _connect(server)
    slow.sendall(head + BODY[:5])  # the rest never comes: 408 after 1 s
    gone = _connect(server)
    gone.sendall(head + BODY[:5])
    time.sleep(0.3)
    gone.close()  # hangs up mid-body
    data, closed = _read_all(slow, 4.0)
    slow.close()
    assert closed and data.startswith(b"HTTP/1.1 408"), data[:80]
    time.sleep(0.3)
    after = server.metrics()

    def delta(status: str) -> float:
        return metric_value(after, "ragturbo_requests_total", route="/generate", status=status) - \
            metric_value(before, "ragturbo_requests_total", route="/generate", status=status)

    assert delta("500") == 0
    assert delta("408") == 1 and delta("499") == 1
