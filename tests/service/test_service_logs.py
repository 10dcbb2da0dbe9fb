"""The JSON log line an operator's log pipeline parses (python-json-logger underneath)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from service.logs import JsonFormatter, request_id_var


def _lines(emit) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    lg = logging.getLogger("ragturbo.test.logs")
    lg.handlers, lg.propagate = [h], False
    lg.setLevel(logging.INFO)
    emit(lg)
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_fields_order_extras_and_request_id() -> None:
    tok = request_id_var.set("req-7")
    try:
        (rec,) = _lines(lambda lg: lg.info("done %s ü", "x", extra={"status": 200, "obj": ValueError("v")}))
    finally:
        request_id_var.reset(tok)
    assert list(rec)[:5] == ["ts", "level", "logger", "msg", "request_id"]
    assert rec["ts"].endswith("Z") and rec["level"] == "INFO" and rec["msg"] == "done x ü"
    assert rec["request_id"] == "req-7" and rec["status"] == 200 and rec["obj"] == "v"


def test_explicit_request_id_and_exception_text() -> None:
    def emit(lg: logging.Logger) -> None:
        lg.warning("w", extra={"request_id": "abc"})
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            lg.exception("boom")

    w, e = _lines(emit)
    assert w["request_id"] == "abc" and "exc" not in w
    assert e["request_id"] == "-" and "ZeroDivisionError" in e["exc"]


def test_text_format_escapes_control_characters_in_logged_paths() -> None:
    """A %0d%0a in a request path cannot write a forged line (LOG_FORMAT=text)."""
    from fastapi.testclient import TestClient
    from service_fakes import FakeT2I

    from service.app import create_app
    from service.logs import TextFormatter
    from service.settings import Settings

    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(TextFormatter())
    lg = logging.getLogger("ragturbo.access")
    old = lg.handlers, lg.propagate, lg.level
    lg.handlers, lg.propagate = [h], False
    lg.setLevel(logging.INFO)
    try:
        app = create_app(Settings(model_dir="/nonexistent", device="cpu"), lambda _: FakeT2I())
        with TestClient(app) as c:
            r = c.get("/x%0d%0a2026-12-08 01:00:00,000 INFO ragturbo.auth: admin logged in%1b[2J")
            assert r.status_code == 404
    finally:
        lg.handlers, lg.propagate = old[0], old[1]
        lg.setLevel(old[2])
    lines = [ln for ln in buf.getvalue().splitlines() if ln]
    assert len(lines) == 1, lines
    assert "\\r\\n2026-12-08" in lines[0] and "\\x1b[2J" in lines[0] and "\x1b" not in lines[0]


def test_metrics_have_no_created_series() -> None:
    from service.metrics import Metrics

    m = Metrics()
    m.requests.labels(route="/generate", status="200").inc()
    m.request_duration.labels(route="/generate").observe(0.1)
    text = m.render().decode()
    assert "ragturbo_requests_total" in text
    assert "_created" not in text


def test_server_log_is_json_lines_only(real_server: Any) -> None:
    """No third-party progress bar ("Loading weights") between the JSON lines."""
    import json

    lines = [ln for ln in real_server.logs().replace("\r", "\n").splitlines() if ln.strip()]
    assert lines
    bad = []
    for ln in lines:
        try:
            json.loads(ln)
        except ValueError:
            bad.append(ln)
    assert bad == [], bad[:3]
