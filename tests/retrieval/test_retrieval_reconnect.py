"""An index that is unavailable when it is opened comes back by itself:
Qdrant Edge shard held by another process, then released; Qdrant server down, then up.
Meanwhile calls fail fast with RetrievalError and ``status()`` says why."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from retrieval.edge_index import EdgeIndex
from retrieval.server_index import QdrantServerIndex
from retrieval.types import RetrievalError

PID = "6f0c1d2e-8a4b-5c3d-9e7f-a1b2c3d4e5f6"
HOLD = """
import sys, time
from retrieval.edge_index import EdgeIndex
import numpy as np
idx = EdgeIndex(sys.argv[1], 4)
idx.upsert([sys.argv[2]], np.ones((1, 4), np.float32), [{"caption": "held"}])
print("holding", flush=True)
sys.stdin.readline()  # hold the shard until the test says so
idx.close()
"""


def _wait(cond: Any, timeout_s: float = 15.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_edge_shard_held_by_another_process_is_opened_once_released(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), PID],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        idx = EdgeIndex(path, 4)  # must not raise: it reconnects in the background
        ok, reason = idx.status()
        assert not ok and reason is not None and "another process" in reason
        with pytest.raises(RetrievalError, match="unavailable"):
            idx.search(np.ones((1, 4), np.float32), 1)
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
        assert _wait(lambda: idx.status()[0]), idx.status()
        (res,) = idx.search(np.ones((1, 4), np.float32), 1)
        assert [n.caption for n in res] == ["held"]
        idx.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


class FlakyClient:
    """A QdrantClient (local mode) behind a switch: while ``down`` every call fails the
    way a refused connection does."""

    def __init__(self) -> None:
        from qdrant_client import QdrantClient

        self.inner = QdrantClient(location=":memory:")
        self.down = True
        self.calls_while_up = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            if self.down:
                raise httpx.ConnectError("[Errno 111] Connection refused")
            self.calls_while_up += 1
            return attr(*a, **kw)

        return call


def test_qdrant_server_down_at_start_is_reached_once_up() -> None:
    client = FlakyClient()
    idx = QdrantServerIndex(4, client=client, retries=0)
    ok, reason = idx.status()
    assert not ok and reason is not None and "Connection refused" in reason
    with pytest.raises(RetrievalError):
        idx.search(np.ones((1, 4), np.float32), 1)
    client.down = False
    assert _wait(lambda: idx.status()[0]), idx.status()
    idx.upsert([PID], np.ones((1, 4), np.float32), [{"caption": "up"}])
    (res,) = idx.search(np.ones((1, 4), np.float32), 1)
    assert [n.caption for n in res] == ["up"] and client.calls_while_up > 0
    client.down = True  # a later outage shows in status() too
    with pytest.raises(RetrievalError):
        idx.search(np.ones((1, 4), np.float32), 1)
    assert idx.status()[0] is False
    client.down = False
    idx.search(np.ones((1, 4), np.float32), 1)
    assert idx.status() == (True, None)
    idx.close()


def test_a_wrong_width_collection_still_fails_at_once() -> None:
    client = FlakyClient()
    client.down = False
    QdrantServerIndex(4, client=client)
    with pytest.raises(RetrievalError, match="width"):
        QdrantServerIndex(8, client=client)
