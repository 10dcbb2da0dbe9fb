"""The index interface, run identically on Qdrant Edge, qdrant-client local mode and MemoryIndex."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.index import VectorIndex
from retrieval.types import point_id

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=["edge", "qdrant-client-local-memory", "qdrant-client-local-path", "memory"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> VectorIndex:
    if request.param == "edge":
        from retrieval.edge_index import EdgeIndex

        idx: VectorIndex = EdgeIndex(tmp_path / "edge", DIM)
    elif request.param == "qdrant-client-local-memory":
        from retrieval.server_index import QdrantServerIndex

        idx = QdrantServerIndex(DIM, location=":memory:")
    elif request.param == "memory":
        from retrieval.memory_index import MemoryIndex

        idx = MemoryIndex(DIM)
    else:
        from retrieval.server_index import QdrantServerIndex

        idx = QdrantServerIndex(DIM, path=tmp_path / "local")
    yield idx
    idx.close()


def fill(index: VectorIndex, n: int = 50, seed: int = 0) -> tuple[list[str], np.ndarray]:
    v = unit(np.random.default_rng(seed), n)
    ids = [point_id(f"caption {i}", bytes([i])) for i in range(n)]
    index.upsert(ids, v, [{"caption": f"caption {i}"} for i in range(n)])
    return ids, v


def test_nearest_is_itself_with_cosine_one(index: VectorIndex) -> None:
    ids, v = fill(index)
    res = index.search(v[:5], 3)
    assert [r[0].id for r in res] == ids[:5]
    assert all(abs(r[0].score - 1.0) < 1e-5 for r in res)
    assert res[2][0].caption == "caption 2"
    exact = v[:5] @ v.T
    for q, r in enumerate(res):
        assert [n.id for n in r] == [ids[j] for j in np.argsort(-exact[q])[:3]]
        assert np.allclose([n.score for n in r], np.sort(exact[q])[::-1][:3], atol=1e-5)


def test_upsert_is_idempotent_and_count_contains(index: VectorIndex) -> None:
    ids, _v = fill(index)
    fill(index)  # same ids again
    assert index.count() == 50
    assert index.contains([ids[0], "00000000-0000-0000-0000-000000000000"]) == [True, False]
    assert index.payloads([ids[1]])[ids[1]]["caption"] == "caption 1"


def test_exclude_ids_and_per_query_k(index: VectorIndex) -> None:
    ids, v = fill(index)
    res = index.search(v[:2], [1, 4], [{ids[0]}, set()])
    assert res[0][0].id != ids[0] and len(res[0]) == 1
    assert len(res[1]) == 4 and res[1][0].id == ids[1]
    shared = index.search(v[:2], 2, {ids[0], ids[1]})  # one set for all queries
    assert all(n.id not in (ids[0], ids[1]) for r in shared for n in r)


def test_bad_widths_rejected(index: VectorIndex) -> None:
    with pytest.raises(ValueError, match=r"\(B,16\)"):
        index.search(np.zeros((1, DIM + 1), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones((1, DIM), np.float32), 0)


def test_empty_index_returns_no_neighbours(index: VectorIndex) -> None:
    assert index.search(np.ones((2, DIM), np.float32), 3) == [[], []]
    assert index.count() == 0


def test_point_id_is_stable_and_content_keyed() -> None:
    a = point_id("a red circle", b"\x89PNG...")
    assert a == point_id("a red circle", b"\x89PNG...")
    assert a != point_id("a red circle", b"\x89PNG..!")
    assert a != point_id("a red circl", b"e\x89PNG...")  # the separator keeps fields apart
    assert a == point_id(" a red circle\n", b"\x89PNG...")  # surrounding whitespace is not content


def test_edge_reopen_keeps_points(tmp_path: Path) -> None:
    from retrieval.edge_index import EdgeIndex

    idx = EdgeIndex(tmp_path / "e", DIM)
    ids, v = fill(idx, 10)
    idx.close()
    idx = EdgeIndex(tmp_path / "e", DIM)
    assert idx.count() == 10 and idx.search(v[:1], 1)[0][0].id == ids[0]
    idx.close()


def test_server_index_retries_then_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from retrieval.server_index import QdrantServerIndex
    from retrieval.types import RetrievalError

    idx = QdrantServerIndex(DIM, location=":memory:", retries=2, backoff_s=0.001)
    calls = []

    def boom(*a: object, **k: object) -> None:
        calls.append(1)
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(idx._client, "query_batch_points", boom)
    with pytest.raises(RetrievalError, match="connection refused"):
        idx.search(np.ones((1, DIM), np.float32), 1)
    assert len(calls) == 3  # first try + 2 retries
