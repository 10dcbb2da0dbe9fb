"""A feature shard with NaN/inf H-features, or one that cannot be read, is not served: the
other shards keep serving, /readyz names the excluded shard, and a repaired shard is
served again without a restart (real engine factory, torch and fast on CPU)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_service_readyz_retrieval import wait_ready

from service.app import create_app
from service.settings import Settings

EXTRA = [("0.png", "a crimson disc"), ("1.png", "a navy block")]


@pytest.fixture(scope="module")
def two_shard_db(tiny_model_dir: Path, ingested_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingested_db (6 pairs, one shard) plus a second shard of 2 pairs."""
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest

    db = tmp_path_factory.mktemp("two-shards") / "db"
    shutil.copytree(ingested_db, db, ignore=shutil.ignore_patterns("*.lock"))
    pipe = OneStepPipeline.from_pretrained(tiny_model_dir)
    d = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    rows = [{"file": f, "caption": c} for f, c in EXTRA]
    ingest(pipe, d, ingested_db.parent, rows, progress=False)
    d.close()
    return db


def _shards(db: Path) -> list[Path]:
    names = [s["name"] for s in json.loads((db / "features" / "manifest.json").read_text())["shards"]]
    return [db / "features" / "shards" / n for n in names]


@pytest.mark.parametrize(("backend", "damage"), [("torch", "unreadable"), ("fast", "nan")])
def test_bad_shard_is_excluded_reported_and_served_after_repair(
    backend: str, damage: str, tiny_model_dir: Path, two_shard_db: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    shutil.copytree(two_shard_db, db, ignore=shutil.ignore_patterns("*.lock"))
    bad = _shards(db)[1]
    bad_ids = {r["id"] for r in json.loads((bad / "rows.json").read_text())}
    good_bytes = (bad / "h.npy").read_bytes()
    if damage == "nan":
        h = np.load(bad / "h.npy")
        h[:] = np.nan
        np.save(bad / "h.npy", h)
    else:
        (bad / "h.npy").write_bytes(good_bytes[:30])
    s = Settings(model_dir=tiny_model_dir, backend=backend, device="cpu", db_path=db,
                 max_batch=2, index_refresh_s=0.05, min_score=0.0)  # any neighbour counts as used
    with TestClient(create_app(s)) as c:
        body = wait_ready(c)
        assert body["status"] == "degraded" and body["retrieval"] == "degraded", body
        assert bad.name in body["detail"]
        assert ("non-finite" if damage == "nan" else "unreadable") in body["detail"]
        assert "ragturbo_retrieval_available 0.0" in c.get("/metrics").text
        req = {"prompt": EXTRA[0][1], "retrieval": {"k": 4}}
        g = c.post("/generate", json=req).json()
        assert g["retrieval_status"] == "ok" and g["retrieved"]  # the other shard serves
        assert not {n["id"] for n in g["retrieved"]} & bad_ids
        t2i = c.app.state.service.t2i  # type: ignore[attr-defined]
        store = (t2i.db or t2i.resident.db).store
        store.retry_bad_s = 0.0
        (bad / "h.npy").write_bytes(good_bytes)  # repaired while serving
        for _ in range(100):
            time.sleep(0.06)
            g = c.post("/generate", json=req).json()
            if {n["id"] for n in g["retrieved"]} & bad_ids:
                break
        assert {n["id"] for n in g["retrieved"]} & bad_ids, g["retrieved"]
        body = c.get("/readyz").json()
        assert body["status"] == "ready" and body["retrieval"] == "ok", body
