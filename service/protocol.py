"""Bounded request reading: uvicorn's h11 protocol with header and body deadlines.

uvicorn has no timeout on receiving a request: ``timeout_keep_alive`` only covers the
idle time between requests and every received byte resets it, so a client that trickles
its headers (or its body) holds a connection, and a coroutine, forever. ASGI middleware
cannot help before the headers are parsed. This subclass arms one timer per phase:

- headers: from the connection (or the end of the previous response) until h11 has the
  complete request head -> ``header_timeout_s``;
- body: from the head until the last body byte -> ``body_timeout_s``.

No read timer runs while the app computes the response. On expiry the client gets
``408 {"error": {"code": "request_timeout", ...}}`` with ``Connection: close`` (or, if it
never sent a byte, just the close) and the app sees ``http.disconnect``.

Writing has its deadline too: when the client does not read, the transport's buffer
fills and uvicorn stops writing (``pause_writing``); if it is still paused after
``write_timeout_s`` the connection is aborted (a log line says so), which releases the
handler and the buffered response. A client reading at any pace keeps it going.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import BadRequest, RequestTimeout, envelope
from service.framing import StrictH11Connection
from service.middleware import READ_TIMEOUT_KEY

log = logging.getLogger(__name__)


class DeadlineH11Protocol(H11Protocol):
    """Set ``header_timeout_s`` / ``body_timeout_s`` on a subclass (``protocol_class``)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = StrictH11Connection(h11.SERVER, self.conn._max_incomplete_event_size)
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_phase: str | None = None
        self._got_bytes = False
        self._write_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if data:
            self._got_bytes = True
        super().data_received(data)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._got_bytes = bool(self.conn.trailing_data[0])
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        log.warning(
            "response not read by the client within %gs; connection aborted",
            self.write_timeout_s,
            extra={"client": f"{self.client[0]}:{self.client[1]}" if self.client else "-"},
        )
        self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        """A malformed or ambiguously framed request: JSON 400, Connection: close, close."""
        reason = getattr(self.conn, "reject_reason", None) or msg
        log.warning("invalid HTTP request (%s); 400 and close", reason)
        err = BadRequest(reason, code="bad_framing" if reason != msg else "bad_request")
        body = json.dumps(envelope(err)).encode()
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    # ------------------------------------------------------------------ timers
    def _phase(self) -> str | None:
        if self.transport is None or self.transport.is_closing():
            return None
        state = self.conn.their_state
        if state is h11.IDLE:
            return "headers"
        if state is h11.SEND_BODY:
            return "body"
        return None  # request complete (the app is working) or closed

    def _arm(self) -> None:
        phase = self._phase()
        if phase == self._read_phase:
            return
        self._disarm()
        self._read_phase = phase
        if phase is not None:
            timeout = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._read_timer = self.loop.call_later(timeout, self._expired, phase, timeout)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._read_phase = None

    def _expired(self, phase: str, timeout: float) -> None:
        self._read_timer = None
        self._read_phase = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if phase == "body" else None
        if phase == "headers" and not self._got_bytes:
            log.debug("idle connection closed after %.0fs without a request", timeout)
        else:
            log.warning(
                "request %s not received within %gs; 408 and close",
                phase,
                timeout,
                extra={"client": f"{self.client[0]}:{self.client[1]}" if self.client else "-"},
            )
            if cycle is None or not cycle.response_started:
                err = RequestTimeout(f"request {phase} not received within {timeout:g} s")
                body = json.dumps(envelope(err)).encode()
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
        if cycle is not None:  # the app is reading the body: it sees http.disconnect
            cycle.scope.setdefault("state", {})[READ_TIMEOUT_KEY] = True  # counted as 408
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def protocol_class(
    header_timeout_s: float, body_timeout_s: float, write_timeout_s: float = 30.0
) -> type[H11Protocol]:
    """A DeadlineH11Protocol with these limits, for ``uvicorn.Config(http=...)``."""
    return type(
        "BoundedH11Protocol",
        (DeadlineH11Protocol,),
        {
            "header_timeout_s": float(header_timeout_s),
            "body_timeout_s": float(body_timeout_s),
            "write_timeout_s": float(write_timeout_s),
        },
    )
