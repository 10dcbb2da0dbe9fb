"""Strict HTTP/1.1 message framing (RFC 9112) on top of h11, against request smuggling.

h11 frames a request that carries both ``Content-Length`` and ``Transfer-Encoding`` by
the transfer coding and keeps the connection open, and it accepts a bare LF as a line
ending. A proxy in front that frames the same bytes differently (by Content-Length, or
by CRLF only) then sees one request where the service sees two. ``StrictH11Connection``
refuses both before the request reaches the app: the request head is checked for a line
ending that is not CRLF, and a head naming both framings is rejected; the protocol
(``service.protocol``) answers ``400 {"error": {"code": "bad_framing", ...}}`` with
``Connection: close`` and closes, so nothing after it on that connection is read.
"""

from __future__ import annotations

import re
from typing import Any

import h11

_BARE_LF = re.compile(rb"(?<!\r)\n")


class StrictH11Connection(h11.Connection):
    """An h11 server connection that raises ``RemoteProtocolError`` on ambiguous framing;
    ``reject_reason`` says why (for the 400 body)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reject_reason: str | None = None

    def _reject(self, reason: str) -> None:
        self.reject_reason = reason
        raise h11.RemoteProtocolError(reason, error_status_hint=400)

    def next_event(self) -> Any:
        if self.their_state is h11.IDLE:
            # the buffer starts with the next request head (private, stable in h11 0.14-0.16)
            buf = bytes(self._receive_buffer)
            end = buf.find(b"\r\n\r\n")
            head = buf if end < 0 else buf[:end]
            if _BARE_LF.search(head):
                self._reject("request head has a line ending that is not CRLF (bare LF)")
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {k.lower() for k, _ in event.headers}
            if b"transfer-encoding" in names and b"content-length" in names:
                self._reject("request has both Content-Length and Transfer-Encoding")
        return event
