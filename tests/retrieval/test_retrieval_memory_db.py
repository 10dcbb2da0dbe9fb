"""A ``RetrievalDB`` built in memory (``MemoryIndex`` + ``MemoryFeatures``): what the toy
world's eval hands to ``retrieval.compose``."""

from __future__ import annotations

import pytest
import torch

from retrieval.db import RetrievalDB
from retrieval.memory_index import MemoryFeatures, MemoryIndex


def _db(n: int = 6, dim: int = 8) -> tuple[RetrievalDB, torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(0)
    vec = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    feats = torch.randn(n, 2, 3, 3, generator=g)
    ids = [f"p{i}" for i in range(n)]
    index = MemoryIndex.from_vectors(ids, vec, [{"caption": f"c{i}"} for i in range(n)], unit=True)
    return RetrievalDB(index, MemoryFeatures(ids, feats)), vec, feats, ids


def test_unit_vectors_are_kept_bit_for_bit() -> None:
    db, vec, _, ids = _db()
    got = db.index.vectors(ids)
    assert all(torch.equal(torch.from_numpy(got[i]), vec[j]) for j, i in enumerate(ids))


def test_search_and_features_match_a_plain_matmul() -> None:
    db, vec, feats, ids = _db()
    q = vec[[4, 1]] + 0.01
    want_s, want_i = (torch.nn.functional.normalize(q, dim=-1) @ vec.T).topk(2, dim=1)
    res = db.search(q, 2)
    assert [[n.id for n in r] for r in res] == [[ids[j] for j in row] for row in want_i.tolist()]
    assert [[n.score for n in r] for r in res] == want_s.tolist()
    assert res[0][0].caption == "c4"
    assert torch.equal(db.features(["p4", "p1"]), feats[[4, 1]])
    assert db.contains(["p1", "nope"]) == [True, False]


def test_memory_features_are_read_only_and_checked() -> None:
    db, vec, feats, _ = _db()
    with pytest.raises(TypeError, match="FeatureStore"):
        db.upsert(["x"], vec[:1], feats[:1], feats[:1], ["c"], ["f"])
    with pytest.raises(ValueError, match="3 features"):
        MemoryFeatures(["a", "b", "c"], feats[:2])
