"""Host allow-list (DNS rebinding), HEAD on GET routes, no CDN-loaded docs page."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from service_fakes import FakeT2I
from service_servers import Server
from test_service_framing import _exchange
from test_service_slow_clients import strict_server  # noqa: F401 - the loopback server fixture

from service.app import create_app
from service.http_rules import default_allowed_hosts, host_allowed, host_name
from service.settings import Settings


def test_loopback_server_refuses_a_foreign_host_header(strict_server: Server) -> None:  # noqa: F811
    port = strict_server.port
    for host in (b"evil.example", b"evil.example:%d" % port, b"127.0.0.1.evil.example"):
        data, _ = _exchange(strict_server, b"GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
        assert data.startswith(b"HTTP/1.1 400"), data
        assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_host"
    for host in (b"127.0.0.1:%d" % port, b"localhost:%d" % port, b"[::1]:%d" % port):
        data, _ = _exchange(strict_server, b"GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
        assert data.startswith(b"HTTP/1.1 200"), (host, data)


def test_head_on_get_routes_and_no_swagger_page(strict_server: Server) -> None:  # noqa: F811
    for path in (b"/healthz", b"/readyz", b"/metrics", b"/openapi.json"):
        data, closed = _exchange(
            strict_server, b"HEAD %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path
        )
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (path, head)
        assert body == b"" and closed
    data, _ = _exchange(strict_server, b"GET /docs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 404") and b"cdn" not in data  # nothing loads third-party code


def test_allowed_hosts_setting_and_defaults() -> None:
    assert default_allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1"]
    assert default_allowed_hosts("::1") == default_allowed_hosts("localhost")
    assert default_allowed_hosts("0.0.0.0") == ["*"]
    assert host_name("[::1]:8000") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_allowed("a.example.com", ["*.example.com"]) and not host_allowed("example.org", ["*.example.com"])
    s = Settings(model_dir="/nonexistent", device="cpu", allowed_hosts="api.example.com, *.svc")
    assert s.allowed_hosts == ["api.example.com", "*.svc"]
    with TestClient(create_app(s, lambda _: FakeT2I()), base_url="http://api.example.com") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"host": "x.svc"}).status_code == 200
        r = c.get("/healthz", headers={"host": "evil.example"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
        assert c.head("/healthz").status_code == 200 and c.head("/healthz").content == b""
        assert c.head("/generate").status_code == 405  # a POST route stays POST-only
