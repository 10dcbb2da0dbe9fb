"""POST /search: the nearest captions from the served database (fakes, and the tiny real
model), its auth and 422s; and ``ragturbo search --url`` against a live server, in a
process that must not import torch or transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fakes import FakeT2I
from service_servers import free_port

from service.app import create_app
from service.settings import Settings

KEY = "s3cret-key-1"
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def client(factory: Any = None, **kw: Any) -> Iterator[TestClient]:
    s = Settings(model_dir=kw.pop("model_dir", "/nonexistent"), device="cpu", max_wait_ms=1, **kw)
    app = create_app(s, factory or (lambda _: FakeT2I()))
    with TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(3000):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.01)
        yield c


def test_search_answers_results_and_the_database() -> None:
    with client() as c:
        r = c.post("/search", json={"query": "a red circle", "k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [h["caption"] for h in body["results"]] == [f"a red circle {i}" for i in range(3)]
        assert [set(h) for h in body["results"]] == [{"id", "caption", "score"}] * 3
        assert "database" in body
        assert len(c.post("/search", json={"query": "x"}).json()["results"]) == 5  # default k


def test_search_needs_the_key_when_keys_are_configured() -> None:
    with client(api_keys=[KEY]) as c:
        r = c.post("/search", json={"query": "a red circle"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = c.post("/search", json={"query": "a red circle"}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert c.post("/search", json={"query": "a"}, headers={"X-API-Key": KEY}).status_code == 200


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"query": ""}, "query"),
        ({"query": " \t"}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 9}, "k"),
        ({"query": "x", "k": "2"}, "k"),
        ({"query": "x", "top_k": 2}, "top_k"),
        ({}, "query"),
    ],
)
def test_search_refuses_bad_fields_with_the_envelope(body: dict[str, Any], names: str) -> None:
    with client() as c:
        r = c.post("/search", json=body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "validation_error" and names in err["message"]
        assert c.post("/search", json={"query": "x" * 1000, "k": 8}).status_code == 200


def test_search_with_retrieval_down_is_503_without_paths() -> None:
    with client(lambda _: FakeT2I(retrieval_down=True)) as c:
        r = c.post("/search", json={"query": "a red circle"})
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "retrieval_unavailable" and "/secret" not in err["message"]


@pytest.mark.parametrize("backend", ["torch", "fast"])
def test_search_uses_the_served_embedding_and_index(tiny_model_dir: Path, ingested_db: Path,
                                                     tmp_path: Path, backend: str) -> None:
    """The real engine: the nearest caption is the query itself, and the scores are the
    pipeline's own embedding searched in the database; the database named is this one
    (``fast`` keeps a device copy and searches the host index behind it)."""
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.types import database_id
    from service.seam import build_from_settings

    db, twin = tmp_path / "db", tmp_path / "twin"  # the server keeps db open: compare on a copy
    for d in (db, twin):
        shutil.copytree(ingested_db, d, ignore=shutil.ignore_patterns("*.lock"))
    with client(build_from_settings, model_dir=str(tiny_model_dir), db_path=str(db), backend=backend) as c:
        r = c.post("/search", json={"query": "a green circle", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["database"]["id"] == database_id(db) and body["database"]["pairs"] == 6
    pipe = OneStepPipeline.from_pretrained(tiny_model_dir)
    database = open_db_for_pipeline(DbConfig(db_path=twin), pipe)
    try:
        want = database.search(pipe.encode_text(["a green circle"]).pooled, 3)[0]
    finally:
        database.close()
    assert [h["id"] for h in body["results"]] == [n.id for n in want]
    assert body["results"][0]["caption"] == "a green circle"
    assert [h["score"] for h in body["results"]] == pytest.approx([n.score for n in want], abs=1e-5)


@pytest.fixture()
def live_url() -> Iterator[str]:
    """The service app (fake engine) on a real socket, in this process."""
    import uvicorn

    port = free_port()
    app = create_app(Settings(model_dir="/nonexistent", device="cpu"), lambda _: FakeT2I())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(500):
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    yield url
    server.should_exit = True
    th.join(10)


def test_cli_search_through_the_server_imports_no_torch(live_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAGTURBO_DB_PATH": str(tmp_path / "nodb")}

    def cli(*extra: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "ragturbo.cli",
               "search", "a red circle", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    r = cli("--k", "2", "--url", live_url, importtime=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [" 0.9000  id0  a red circle 0", " 0.8000  id1  a red circle 1"]
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if "import time:" in ln]
    assert "httpx" in imported
    assert [m for m in imported if m.split(".")[0] in ("torch", "transformers")] == []
    j = cli("--k", "1", "--url", live_url, "--json")
    assert j.returncode == 0, j.stderr[-2000:]
    assert j.stdout.strip() == '[{"id": "id0", "caption": "a red circle 0", "score": 0.9}]'
    bad = cli("--k", "9", "--url", live_url)
    assert bad.returncode == 1 and f"{live_url}/search answered 422" in bad.stderr
