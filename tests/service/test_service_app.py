"""The app in process (fast): auth, readiness, failure mapping, degradation, OpenAPI."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fakes import FakeT2I

from service.app import create_app
from service.settings import Settings

KEY = "s3cret-key-1"


@contextmanager
def client(factory: Any = None, wait_ready: bool = True, **kw: Any) -> Iterator[TestClient]:
    s = Settings(model_dir="/nonexistent", device="cpu", max_wait_ms=1, **kw)
    app = create_app(s, factory or (lambda _: FakeT2I()))
    with TestClient(app, raise_server_exceptions=False) as c:
        if wait_ready:
            for _ in range(200):
                if c.get("/readyz").status_code == 200:
                    break
                time.sleep(0.01)
        yield c


def test_api_keys_guard_generation_not_health() -> None:
    with client(api_keys=[KEY, "other-key-2"]) as c:
        body = {"prompt": "a red circle"}
        r = c.post("/generate", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert (
            c.post("/generate", json=body, headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        assert (
            c.post("/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code
            == 200
        )
        assert (
            c.post("/generate", json=body, headers={"X-API-Key": "other-key-2"}).status_code == 200
        )
        assert c.post("/v1/images/generations", json=body).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200  # open unless metrics_require_key
        assert 'ragturbo_rejected_total{reason="unauthorized"} 3.0' in c.get("/metrics").text


def test_metrics_can_require_a_key() -> None:
    with client(api_keys=[KEY], metrics_require_key=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_retrieval_outage_degrades_to_200_and_is_counted() -> None:
    with client(lambda _: FakeT2I(retrieval_down=True)) as c:
        r = c.post("/generate", json={"prompt": "a red circle", "seed": 1})
        assert r.status_code == 200 and r.json()["retrieval_status"] == "unavailable"
        assert r.json()["retrieved"] == []
        assert "ragturbo_retrieval_unavailable_total 1.0" in c.get("/metrics").text


def test_backend_that_cannot_start_leaves_the_service_not_ready() -> None:
    def broken(_: Settings) -> Any:
        raise RuntimeError("libnvinfer.so.10: cannot open shared object file")

    with client(broken, wait_ready=False) as c:
        time.sleep(0.2)
        r = c.get("/readyz")
        assert r.status_code == 503 and "failed" in r.json()["error"]["message"]
        r = c.post("/generate", json={"prompt": "a"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "failed"
        assert c.get("/healthz").status_code == 200
        assert "libnvinfer" not in r.text


def test_a_bug_is_a_500_without_internals() -> None:
    with client(lambda _: FakeT2I(fail_on="boom")) as c:
        r = c.post("/generate", json={"prompt": "boom"})
        assert r.status_code == 500
        assert r.json() == {
            "error": {
                "message": "internal error",
                "type": "internal_error",
                "code": "internal_error",
            }
        }
        assert c.post("/generate", json={"prompt": "fine"}).status_code == 200


def test_deadline_gives_504() -> None:
    with client(lambda _: FakeT2I(batch_s=0.4), request_timeout_s=0.2, max_batch=1) as c:
        t0 = time.monotonic()
        r = c.post("/generate", json={"prompt": "slow"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert time.monotonic() - t0 < 0.4
        assert 'ragturbo_rejected_total{reason="timeout"} 1.0' in c.get("/metrics").text


def test_prompts_are_logged_only_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        with client() as c:
            c.post("/generate", json={"prompt": "private words"})
        assert "private words" not in str([vars(r) for r in caplog.records])
        with client(log_prompts=True) as c:
            c.post("/generate", json={"prompt": "public words"})
        assert "public words" in str([vars(r) for r in caplog.records])


def test_openapi_states_the_configured_limits_and_error_envelope() -> None:
    with client(max_prompt_chars=300) as c:
        doc = c.get("/openapi.json").json()
        req = doc["components"]["schemas"]["GenerateRequest"]
        assert req["properties"]["prompt"]["maxLength"] == 300
        assert set(doc["paths"]) >= {
            "/generate",
            "/v1/images/generations",
            "/healthz",
            "/readyz",
            "/metrics",
        }
        ops = doc["paths"]["/generate"]["post"]["responses"]
        assert {"200", "401", "413", "422", "429", "503", "504"} <= set(ops)
        assert ops["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
        r = c.post("/generate", json={"prompt": "x" * 301})
        assert r.status_code == 422 and "prompt" in r.json()["error"]["message"]


def test_unknown_route_and_method_use_the_envelope() -> None:
    with client() as c:
        assert c.get("/nope").json()["error"]["code"] == "not_found"
        r = c.get("/generate")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
