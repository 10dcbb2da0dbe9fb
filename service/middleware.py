"""Pure-ASGI middleware: request ids + access log + request metrics, and the body limit.

Pure ASGI (not BaseHTTPMiddleware) so the endpoint keeps the real ``receive`` channel,
which is how it notices a client that disconnects while its request waits.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, envelope
from service.logs import request_id_var
from service.metrics import Metrics

log = logging.getLogger("ragturbo.access")

ROUTES = frozenset(
    {
        "/generate",
        "/search",
        "/v1/images/generations",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/admin/ingest",
    }
)
READ_TIMEOUT_KEY = "ragturbo.read_timeout"
"""Set in ``scope["state"]`` by the protocol when it answered 408 for this request."""
_RID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def route_label(path: str) -> str:
    """Known routes by path, everything else 'other' (bounded label cardinality)."""
    return path if path in ROUTES else "other"


class RequestContextMiddleware:
    """X-Request-ID in (if well-formed) or new, echoed out; counts every response."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = ""
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                rid = v.decode("latin-1")
        if not _RID_OK.match(rid):
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = client_gone = False

        async def receive_wrapped() -> Message:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone = True
            return message

        async def send_wrapped(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-request-id", rid.encode())
                ]
            await send(message)

        try:
            await self.app(scope, receive_wrapped, send_wrapped)
        finally:
            if not started and client_gone:
                # no response from the app: the protocol answered 408 (body not received in
                # time) or the client hung up (499, nginx's "client closed request")
                status = 408 if scope["state"].get(READ_TIMEOUT_KEY) else 499
            route = route_label(scope.get("path", ""))
            dt = time.perf_counter() - t0
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(dt)
            log.info(
                "%s %s %d %.1fms",
                scope.get("method"),
                scope.get("path"),
                status,
                dt * 1000,
                extra={"route": route, "status": status, "duration_ms": round(dt * 1000, 2)},
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 when the body exceeds ``max_bytes``, counted while reading — a missing or lying
    Content-Length does not get a larger body through. The body is buffered (it is a
    small JSON document) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def _reject(self, send: Send, path: str) -> None:
        self.metrics.rejected.labels(reason="too_large").inc()
        err = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        body = json.dumps(envelope(err, openai=path.startswith("/v1/"))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                await self._reject(send, scope.get("path", ""))
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, scope.get("path", ""))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
