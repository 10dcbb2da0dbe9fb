"""Request smuggling: ambiguous framing is refused with a 400 and the connection closed,
so bytes after it never run as a second request. Raw sockets against a real server."""

from __future__ import annotations

import json

import test_service_slow_clients as slow
from service_servers import Server
from test_service_slow_clients import _connect, _read_all

strict_server = slow.strict_server  # the module-scoped server fixture, shared

SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _exchange(srv: Server, raw: bytes) -> tuple[bytes, bool]:
    s = _connect(srv)
    try:
        s.sendall(raw)
        return _read_all(s, 5.0)
    finally:
        s.close()


def _assert_one_400(data: bytes, closed: bool) -> None:
    assert closed, data
    assert data.startswith(b"HTTP/1.1 400"), data
    assert data.count(b"HTTP/1.1 ") == 1, data  # the smuggled request got no answer
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "bad_framing"


def test_content_length_with_transfer_encoding_is_refused_and_closed(strict_server: Server) -> None:
    raw = (
        b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    )
    _assert_one_400(*_exchange(strict_server, raw))


def test_bare_lf_line_endings_are_refused_and_closed(strict_server: Server) -> None:
    _assert_one_400(*_exchange(strict_server, b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n" + SMUGGLED))
    # a bare LF inside an otherwise CRLF head too
    _assert_one_400(*_exchange(strict_server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\nX: y\r\n\r\n"))


def test_well_framed_pipelined_requests_still_work(strict_server: Server) -> None:
    s = _connect(strict_server)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Connection: close\r\n\r\n")
        data, closed = _read_all(s, 5.0)
    finally:
        s.close()
    assert closed and data.count(b"HTTP/1.1 200") == 2, data
