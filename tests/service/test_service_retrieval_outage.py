"""Issue 14.2 end to end: the service starts while its Qdrant Edge shard is held by
another process; /readyz says degraded with the reason, requests are served without
retrieval; once the shard is released the service reopens it by itself (backoff) and
retrieval comes back, without a restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_servers import Server, metric_value

HOLD = """
import json, sys
from pathlib import Path
from retrieval.edge_index import EdgeIndex
path = Path(sys.argv[1])
dim = json.loads((path / "edge_config.json").read_text())["vectors"][""]["size"]
idx = EdgeIndex(path, dim, reconnect=False)
print("holding", flush=True)
sys.stdin.readline()
idx.close()
"""


def test_index_locked_at_start_is_reopened_and_readyz_says_why(
    tiny_model_dir: Path, ingested_db: Path, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    shutil.copytree(ingested_db, db, ignore=shutil.ignore_patterns("*.lock"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db / "edge")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    srv = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        srv = Server(
            {"RAGTURBO_MODEL_DIR": str(tiny_model_dir), "RAGTURBO_DB_PATH": str(db)},
            "real",
            tmp_path,
        )
        srv.wait_ready()
        ready = httpx.get(f"{srv.url}/readyz", timeout=5).json()
        assert ready["status"] == "degraded" and ready["retrieval"] == "degraded", ready
        assert "another process" in ready["detail"]
        assert metric_value(srv.metrics(), "ragturbo_retrieval_available") == 0
        body = {"prompt": "a red circle", "seed": 1}
        r = httpx.post(f"{srv.url}/generate", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["retrieval_status"] == "unavailable"
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
        deadline = time.monotonic() + 20
        while httpx.get(f"{srv.url}/readyz", timeout=5).json()["status"] != "ready":
            assert time.monotonic() < deadline, "the index was never reopened"
            time.sleep(0.2)
        r = httpx.post(f"{srv.url}/generate", json=body, timeout=30)
        assert r.json()["retrieval_status"] == "ok" and len(r.json()["retrieved"]) == 1
        assert metric_value(srv.metrics(), "ragturbo_retrieval_available") == 1
        assert "retrieval available again" in srv.logs()
    finally:
        if srv is not None:
            srv.stop()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
