"""HTTP rules the framework leaves to us: a Host allow-list and HEAD on GET routes.

``HostCheckMiddleware``: a request whose ``Host`` header is not allowed gets
``400 {"error": {"code": "invalid_host"}}``. This is what stops DNS rebinding: a web page
on ``evil.example`` whose name is re-pointed at 127.0.0.1 makes the browser send
``Host: evil.example`` to a keyless service bound to loopback. Patterns are host names
or addresses without port, ``*`` (any) or ``*.example.com`` (any subdomain). The default
(``RAGTURBO_ALLOWED_HOSTS`` empty) is ``localhost, 127.0.0.1, ::1`` when the service binds
a loopback address, and any host otherwise (a pod is reached under many names; set the
list there to enforce one).

``HeadAsGetMiddleware``: HEAD on a GET route answers as GET would, without the body
(RFC 9110 §9.3.2); FastAPI's routes accept only the methods they declare.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BadRequest, envelope

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def default_allowed_hosts(bind_host: str) -> list[str]:
    """The allow-list for a bind address when none is configured (see module doc)."""
    h = bind_host.strip("[]").lower()
    try:
        loopback = h == "localhost" or ipaddress.ip_address(h).is_loopback
    except ValueError:
        loopback = False
    return list(LOOPBACK_HOSTS) if loopback else ["*"]


def host_name(value: str) -> str:
    """``Host`` header value -> the host without port, lowercased (``[::1]:80`` -> ``::1``)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1 : v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    for p in patterns:
        p = p.strip().lower()
        if p == "*" or p == host or (p.startswith("*.") and host.endswith(p[1:])):
            return True
    return False


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed = [h for h in allowed_hosts if h.strip()]
        self.any = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope.get("headers", []) if k == b"host"), b"")
        host = host_name(raw.decode("latin-1"))
        if host and host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        log.warning("request refused: Host %r is not in the allowed hosts", host[:100])
        err = BadRequest(
            "Host header not allowed on this server (see RAGTURBO_ALLOWED_HOSTS)", code="invalid_host"
        )
        body = json.dumps(envelope(err, openai=scope.get("path", "").startswith("/v1/"))).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def no_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, no_body)
