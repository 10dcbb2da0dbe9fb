"""/readyz says where retrieval runs, through the real engine factory (torch and fast on CPU).

A database that cannot be opened is not a log line: /readyz says degraded with the reason
and the gauge is 0; with the shipped-style database it says ok and where the search runs
(inside the fast backend's graph, or in the Qdrant index).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def wait_ready(c: TestClient) -> dict[str, Any]:
    """The /readyz body once it answers 200 (the model loads in the background), or the last one."""
    for _ in range(600):
        r = c.get("/readyz")
        if r.status_code == 200:
            break
        time.sleep(0.1)
    return r.json()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.random_models import write_model_dir

    return write_model_dir(tmp_path_factory.mktemp("m") / "tiny", "tiny", adapter_init_std=0.02)


@pytest.mark.parametrize("backend", ["torch", "fast"])
def test_readyz_names_missing_database(backend: str, tiny: Path, tmp_path: Path) -> None:
    s = Settings(model_dir=tiny, backend=backend, device="cpu", db_path=tmp_path / "none", max_batch=2)
    with TestClient(create_app(s)) as c:
        body = wait_ready(c)
        assert body["status"] == "degraded" and body["retrieval"] == "degraded", body
        assert body["detail"] and body["backend"] == backend
        assert "ragturbo_retrieval_available 0.0" in c.get("/metrics").text


def test_readyz_says_the_search_runs_in_the_fast_graph(tiny: Path, tmp_path: Path) -> None:
    s = Settings(model_dir=tiny, backend="fast", device="cpu", synthetic_pairs=64,
                 db_path=tmp_path / "db", max_batch=2, min_score=0.0)  # random pairs: low scores
    with TestClient(create_app(s)) as c:
        body = wait_ready(c)
        assert body["status"] == "ready" and body["retrieval"] == "ok", body
        assert "inside the fast graph over 64 pairs (synthetic)" in body["detail"]
        g = c.post("/generate", json={"prompt": "a red circle", "retrieval": {"k": 2}}).json()
        assert g["retrieval_status"] == "ok" and len(g["retrieved"]) == 2
        assert g["retrieved"][0]["caption"].startswith("synthetic pair")


def test_readyz_names_the_database_it_serves_without_its_path(tiny: Path, tmp_path: Path) -> None:
    """The id `ragturbo generate --db` checks, the model fingerprint and the pair count."""
    import torch

    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.types import database_id

    pipe = OneStepPipeline.from_pretrained(tiny)
    db = tmp_path / "served-db"
    database = open_db_for_pipeline(DbConfig(db_path=db), pipe, create=True)
    try:
        n = 3
        database.upsert([f"00000000-0000-5000-8000-00000000000{i}" for i in range(n)],
                        torch.randn(n, pipe.embed_dim), torch.randn(n, *pipe.h_shape),
                        torch.randn(n, *pipe.latent_shape), ["a", "b", "c"], ["a.png", "b.png", "c.png"])
    finally:
        database.close()
    s = Settings(model_dir=tiny, backend="torch", device="cpu", db_path=db, max_batch=1)
    with TestClient(create_app(s)) as c:
        r = c.get("/readyz")
        for _ in range(600):
            if r.status_code == 200:
                break
            time.sleep(0.1)
            r = c.get("/readyz")
        body = r.json()
    assert body["retrieval"] == "ok", body
    assert body["database"] == {"id": database_id(db), "model_fingerprint": pipe.fingerprint, "pairs": 3}
    assert str(tmp_path) not in r.text
