"""Adding pairs to a running service from another process: ``POST /admin/ingest`` over
HTTP to a real server (fast backend, device copy of the database), the new pairs served
at once; and ``ragturbo ingest`` into the shard that server holds is refused at open,
before any encoding, in one sentence, with exit code 2 and no feature shard left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_servers import Server

KEY = "admin-key-12345"
NEW = ["a violet ring", "an orange stripe", "a grey dot", "a pink frame"]


def _shards(db: Path) -> list[str]:
    return [s["name"] for s in json.loads((db / "features" / "manifest.json").read_text())["shards"]]


def test_pairs_ingested_from_another_process_are_served(
    tiny_model_dir: Path, ingested_db: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    shutil.copytree(ingested_db, db, ignore=shutil.ignore_patterns("*.lock"))
    drop = tmp_path / "incoming"
    (drop / "batch1" / "images").mkdir(parents=True)
    rows = []
    for i, cap in enumerate(NEW):
        shutil.copy(ingested_db.parent / f"{i}.png", drop / "batch1" / "images" / f"n{i}.png")
        rows.append({"file": f"n{i}.png", "caption": cap})
    rows.append({"file": "gone.png", "caption": "a missing image"})
    (drop / "batch1" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    srv = Server(
        {
            "RAGTURBO_MODEL_DIR": str(tiny_model_dir),
            "RAGTURBO_DB_PATH": str(db),
            "RAGTURBO_BACKEND": "fast",
            "RAGTURBO_MAX_BATCH": "2",
            "RAGTURBO_API_KEYS": KEY,
            "RAGTURBO_INGEST_DIR": str(drop),
            "RAGTURBO_INDEX_REFRESH_S": "30",
        },
        "real",
        tmp_path,
    )
    try:
        srv.wait_ready()
        auth = {"Authorization": f"Bearer {KEY}"}
        before = httpx.get(f"{srv.url}/readyz", timeout=5).json()
        assert "over 6 pairs" in before["detail"], before

        # the CLI into the shard the server holds: refused at open, before any encoding
        n_shards = len(_shards(db))
        cli = subprocess.run(
            [sys.executable, "-m", "ragturbo.cli", "ingest", "--db", str(db),
             "--model-dir", str(tiny_model_dir), "--images", str(drop / "batch1" / "images"),
             "--captions", str(drop / "batch1" / "captions.jsonl")],
            capture_output=True, text=True, timeout=120,
        )
        assert cli.returncode == 2, cli.stderr
        err = [ln for ln in cli.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "in use by another process" in err[0], cli.stderr
        assert "reconnect" not in cli.stderr and "ingest:" not in cli.stderr, cli.stderr
        assert len(_shards(db)) == n_shards
        assert not [p for p in (db / "features" / "shards").iterdir() if p.name not in _shards(db)]

        # no key: 401; outside the ingest directory: 422
        body = {"captions": "batch1/captions.jsonl", "images": "batch1/images"}
        assert httpx.post(f"{srv.url}/admin/ingest", json=body, timeout=5).status_code == 401
        bad = {"captions": "../db/x.jsonl", "images": "batch1/images"}
        assert httpx.post(f"{srv.url}/admin/ingest", json=bad, headers=auth, timeout=5).status_code == 422

        t0 = time.monotonic()
        r = httpx.post(f"{srv.url}/admin/ingest", json=body, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        rep = r.json()
        assert rep["added"] == 4 and rep["rejected"] == 1 and rep["pairs"] == 10, rep
        assert rep["rejects"][0]["line"] == 5 and rep["rejects"][0]["file"] == "gone.png"
        served = {}
        for cap in NEW:  # each new pair is its own caption's nearest neighbour, now
            g = httpx.post(f"{srv.url}/generate", timeout=30, headers=auth,
                           json={"prompt": cap, "retrieval": {"k": 1}}).json()
            served[cap] = g["retrieved"][0]["caption"] if g["retrieved"] else None
        elapsed = time.monotonic() - t0
        assert served == {c: c for c in NEW}, served
        assert "over 10 pairs" in httpx.get(f"{srv.url}/readyz", timeout=5).json()["detail"]
        print(f"admin ingest: {rep['added']} pairs in {rep['seconds']:.2f}s, all served "
              f"{elapsed:.2f}s after the POST")
        again = httpx.post(f"{srv.url}/admin/ingest", json=body, headers=auth, timeout=120).json()
        assert again["added"] == 0 and again["already_present"] == 4  # idempotent
    finally:
        srv.stop()
