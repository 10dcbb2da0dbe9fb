"""Regression tests of issue 14 (in process): no host-reflecting redirects, Accept
honoured or 406, schema and validator agree, security declared, dropped jobs log no
asyncio error, engine faults fail their batch then a health check decides readiness."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_fakes import FakeT2I

from retrieval.compose import ImageRequest
from service.app import create_app
from service.batcher import Batcher
from service.metrics import Metrics
from service.settings import Settings

KEY = "s3cret-key-1"


@contextmanager
def client(factory: Any = None, **kw: Any) -> Iterator[TestClient]:
    s = Settings(model_dir="/nonexistent", device="cpu", **kw)
    app = create_app(s, factory or (lambda _: FakeT2I()))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        for _ in range(300):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.01)
        yield c


def test_trailing_slash_is_not_redirected_to_the_host_header() -> None:
    with client() as c:
        for path in ("/generate/", "/healthz/", "/v1/images/generations/"):
            r = c.post(path, json={"prompt": "a"}, headers={"host": "evil.example"})
            assert r.status_code == 404, (path, r.status_code, r.headers)
            assert "location" not in r.headers
            assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("accept", "fmt", "media", "pil"),
    [
        ("image/jpeg", None, "image/jpeg", "JPEG"),
        ("image/webp", None, "image/webp", "WEBP"),
        ("image/png", None, "image/png", "PNG"),
        ("image/*", "webp", "image/webp", "WEBP"),
        ("image/webp;q=0.5, image/jpeg", None, "image/jpeg", "JPEG"),
        ("image/png;q=0.5, image/jpeg;q=0.9", None, "image/jpeg", "JPEG"),  # q wins over the default
        ("image/jpeg;q=0.9, image/png;q=0.9", None, "image/png", "PNG"),  # a tie: the default
        ("image/png;q=0.5, image/jpeg;q=0.9", "png", "image/png", "PNG"),  # the body's own choice
    ],
)
def test_accept_gives_the_requested_image_format(
    accept: str, fmt: str | None, media: str, pil: str
) -> None:
    body: dict[str, Any] = {"prompt": "a red circle", "seed": 1}
    if fmt:
        body["format"] = fmt
    with client() as c:
        r = c.post("/generate", json=body, headers={"accept": accept})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media
        assert Image.open(io.BytesIO(r.content)).format == pil


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [("image/gif", None), ("text/html", None), ("image/jpeg", "png"), ("image/*;q=0", None)],
)
def test_unsatisfiable_accept_is_406_with_the_envelope(accept: str, fmt: str | None) -> None:
    body: dict[str, Any] = {"prompt": "a red circle"}
    if fmt:
        body["format"] = fmt
    with client() as c:
        r = c.post("/generate", json=body, headers={"accept": accept})
        assert r.status_code == 406, (accept, r.status_code, r.headers)
        assert r.json()["error"]["code"] == "not_acceptable"
        assert c.post("/generate", json=body, headers={"accept": "*/*"}).status_code == 200


@pytest.mark.parametrize(
    "prompt", [" ", "\u00a0", "\u001c", "\ufeff", "\u2003\n", "\x00", "a\u00a0", " x", "\u00e9"]
)
def test_schema_and_validator_agree_on_the_prompt(prompt: str) -> None:
    with client() as c:
        doc = c.get("/openapi.json").json()
        for name, route in (
            ("GenerateRequest", "/generate"),
            ("OpenAIImagesRequest", "/v1/images/generations"),
        ):
            pattern = doc["components"]["schemas"][name]["properties"]["prompt"]["pattern"]
            valid = re.search(pattern, prompt) is not None  # JSON Schema: unanchored search
            r = c.post(route, json={"prompt": prompt})
            assert (r.status_code == 200) == valid, (name, repr(prompt), r.status_code, r.text)
            if not valid:
                assert r.status_code in (400, 422) and "prompt" in r.text


def test_openapi_declares_both_key_headers_where_they_apply() -> None:
    with client(api_keys=[KEY], metrics_require_key=True) as c:
        doc = c.get("/openapi.json").json()
        schemes = doc["components"]["securitySchemes"]
        assert schemes["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <API key>",
        }
        assert schemes["apiKey"]["type"] == "apiKey" and schemes["apiKey"]["name"] == "X-API-Key"
        assert schemes["apiKey"]["in"] == "header"
        for path in ("/generate", "/v1/images/generations", "/metrics"):
            (op,) = doc["paths"][path].values()
            assert {"bearer": []} in op["security"] and {"apiKey": []} in op["security"], path
        for path in ("/healthz", "/readyz"):
            (op,) = doc["paths"][path].values()
            assert "security" not in op, path
        assert c.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    with client() as c:  # no keys: nothing declared
        doc = c.get("/openapi.json").json()
        assert "securitySchemes" not in doc.get("components", {})
        assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_dropped_jobs_log_no_asyncio_error(caplog: pytest.LogCaptureFixture) -> None:
    """A job dropped after its caller stopped waiting (504, disconnect) used to log
    "Future exception was never retrieved" once per drop."""

    async def body() -> None:
        pool = ThreadPoolExecutor(1)
        t2i = FakeT2I(batch_s=0.2)
        b = Batcher(t2i.generate, pool, Metrics(), max_batch=1, max_wait_ms=0, max_queue=8)
        b.start()
        busy = b.submit([ImageRequest(prompt="busy", seed=0)], time.monotonic() + 5)
        await asyncio.sleep(0.02)
        for reason in ("timeout", "disconnected"):
            job = b.submit([ImageRequest(prompt=reason, seed=0)], time.monotonic() + 5)
            assert b.abandon(job, reason)
            del job
        expiring = b.submit([ImageRequest(prompt="expires", seed=0)], time.monotonic() + 0.05)
        del expiring  # its caller gave up; the collector drops it when it comes up
        await busy.future
        await asyncio.sleep(0.05)
        await b.stop(1)
        pool.shutdown()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(body())
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_batch_fault_fails_its_requests_and_a_health_check_keeps_a_sound_engine() -> None:
    t2i = FakeT2I(fail_on="boom")  # fails that batch only: the engine is sound
    with client(lambda _: t2i, max_batch=1) as c:
        r = c.post("/generate", json={"prompt": "boom"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        time.sleep(0.1)
        assert c.get("/readyz").status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.post("/generate", json={"prompt": "fine"}).status_code == 200


def test_a_broken_engine_turns_the_service_not_ready_and_not_live() -> None:
    t2i = FakeT2I(break_on="boom", batch_s=0.05)
    with client(lambda _: t2i, max_batch=1) as c, ThreadPoolExecutor(4) as pool:
        first = pool.submit(c.post, "/generate", json={"prompt": "boom"})
        time.sleep(0.02)
        queued = [pool.submit(c.post, "/generate", json={"prompt": f"q{i}"}) for i in range(3)]
        r = first.result()
        assert r.status_code == 500 and r.json()["error"]["message"] == "internal error"
        codes = sorted(f.result().status_code for f in queued)
        assert set(codes) <= {500, 503} and 503 in codes, codes  # never a hang
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "failed"
        assert "health check" in ready.json()["error"]["message"]
        live = c.get("/healthz")
        assert live.status_code == 503 and live.json()["error"]["code"] == "engine_broken"
        r = c.post("/generate", json={"prompt": "later"})
        assert r.status_code == 503
        text = c.get("/metrics").text
        assert 'ragturbo_rejected_total{reason="engine_failed"}' in text


class _Index:
    def __init__(self) -> None:
        self.state: tuple[bool, str | None] = (False, "Qdrant at http://q:6333 unavailable")

    def status(self) -> tuple[bool, str | None]:
        return self.state


class _DB:
    def __init__(self) -> None:
        self.index = _Index()


def test_readyz_reports_degraded_retrieval_with_its_reason_and_a_gauge() -> None:
    t2i = FakeT2I()
    t2i.db = _DB()  # type: ignore[attr-defined]  # what retrieval.compose.TextToImage has
    with client(lambda _: t2i) as c:
        r = c.get("/readyz")
        assert r.status_code == 200  # generation works without retrieval
        assert r.json()["status"] == "degraded" and r.json()["retrieval"] == "degraded"
        assert "http://q:6333" in r.json()["detail"]
        assert "ragturbo_retrieval_available 0.0" in c.get("/metrics").text
        t2i.db.index.state = (True, None)  # type: ignore[attr-defined]
        r = c.get("/readyz")
        assert r.json()["status"] == "ready" and r.json()["retrieval"] == "ok"
        assert "ragturbo_retrieval_available 1.0" in c.get("/metrics").text
        t2i.db = None  # type: ignore[attr-defined]  # the database never opened
        assert "could not be opened" in c.get("/readyz").json()["detail"]


def test_retrieval_status_push_api() -> None:
    with client() as c:
        state = c.app.state.service  # type: ignore[attr-defined]
        assert c.get("/readyz").json()["retrieval"] is None  # nothing known
        state.retrieval_status(False, "index reload failed")
        body = c.get("/readyz").json()
        assert body["status"] == "degraded" and body["detail"] == "index reload failed"
        state.retrieval_status(True)
        assert c.get("/readyz").json()["status"] == "ready"


def test_openai_prompt_length_error_is_worded_as_the_routes_other_400s() -> None:
    with client(max_prompt_chars=10) as c:
        long = c.post("/v1/images/generations", json={"prompt": "x" * 11}).json()["error"]
        other = c.post("/v1/images/generations", json={"prompt": "x", "n": 99}).json()["error"]
    assert long == {"message": "Invalid value for 'prompt': at most 10 characters allowed, got 11.",
                    "type": "invalid_request_error", "code": "invalid_value", "param": "prompt"}
    assert other["message"].startswith("Invalid value for 'n': ") and other["code"] == "invalid_value"
