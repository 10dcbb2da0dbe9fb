"""Feature store: fp16 round trip, LRU cache, fingerprint guard, crash leftovers ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.feature_store import FeatureStore
from retrieval.types import FingerprintMismatchError, RetrievalError

H, L = (8, 2, 2), (4, 4, 4)


def put(store: FeatureStore, ids: list[str], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn((len(ids), *H), generator=g)
    store.put(
        ids,
        h,
        torch.randn((len(ids), *L), generator=g),
        [f"c {i}" for i in ids],
        [f"{i}.png" for i in ids],
    )
    return h


def test_features_round_trip_fp16_and_reopen(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "f", "fp-a", H, L)
    h = put(s, ["a", "b", "c"])
    got = s.features(["c", "a"])
    assert got.dtype == torch.float16 and got.shape == (2, *H)
    assert torch.equal(got, torch.stack([h[2], h[0]]).half())
    s2 = FeatureStore(tmp_path / "f", "fp-a")
    assert len(s2) == 3 and torch.equal(s2.features(["b"])[0], h[1].half())
    assert s2.row("b") == {"id": "b", "caption": "c b", "file": "b.png"}
    assert s2.latents(["a"]).shape == (1, *L)


def test_put_skips_existing_ids(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "f", "fp-a", H, L)
    h1 = put(s, ["a", "b"], seed=0)
    put(s, ["b", "c"], seed=1)
    assert len(s) == 3
    assert torch.equal(s.features(["b"])[0], h1[1].half())  # first write wins


def test_fingerprint_mismatch_names_both(tmp_path: Path) -> None:
    FeatureStore(tmp_path / "f", "aaaa1111", H, L)
    with pytest.raises(FingerprintMismatchError) as e:
        FeatureStore(tmp_path / "f", "bbbb2222")
    assert "aaaa1111" in str(e.value) and "bbbb2222" in str(e.value)


def test_missing_store_and_missing_id_raise(tmp_path: Path) -> None:
    with pytest.raises(RetrievalError, match="ragturbo ingest"):
        FeatureStore(tmp_path / "none", "fp")
    s = FeatureStore(tmp_path / "f", "fp", H, L)
    with pytest.raises(RetrievalError, match="no features"):
        s.features(["nope"])


def test_lru_cache_is_bounded(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "f", "fp", H, L, cache_items=2)
    put(s, ["a", "b", "c"])
    s.features(["a", "b", "c", "a"])
    assert s.stats()["cached"] == 2


def test_unreferenced_shard_is_invisible_and_swept(tmp_path: Path) -> None:
    """A crash after writing a shard but before the manifest commit leaves no visible point."""
    s = FeatureStore(tmp_path / "f", "fp", H, L)
    put(s, ["a"])
    torn = tmp_path / "f" / "shards" / ".tmp-000001-dead"
    torn.mkdir()
    (torn / "h.npy").write_bytes(b"\x93NUMPY garbage")
    orphan = tmp_path / "f" / "shards" / "000009-orphan"
    orphan.mkdir()
    (orphan / "rows.json").write_text(json.dumps([{"id": "z", "caption": "z", "file": "z"}]))
    s2 = FeatureStore(tmp_path / "f", "fp")
    assert len(s2) == 1 and "z" not in s2
    put(s2, ["b"])
    assert not torn.exists() and not orphan.exists()
    assert len(FeatureStore(tmp_path / "f", "fp")) == 2


def test_shape_and_nan_validation(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "f", "fp", H, L)
    with pytest.raises(ValueError, match="expected h"):
        s.put(["a"], np.zeros((1, 9, 2, 2)), np.zeros((1, *L)), ["c"], ["f"])
    with pytest.raises(ValueError, match="NaN"):
        s.put(["a"], np.full((1, *H), np.nan), np.zeros((1, *L)), ["c"], ["f"])
    assert len(s) == 0


def _shard_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "shards").iterdir() if not p.name.startswith("."))


def test_non_finite_shard_on_disk_is_excluded_and_named(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "f", "fp", H, L)
    put(s, ["a", "b"])
    put(s, ["c"], seed=1)
    bad = _shard_dirs(tmp_path / "f")[1]
    h = np.load(bad / "h.npy")
    h[0, 0, 0, 0] = np.inf
    np.save(bad / "h.npy", h)
    s2 = FeatureStore(tmp_path / "f", "fp")
    assert "c" not in s2 and len(s2) == 2  # never served
    assert torch.isfinite(s2.features(["a", "b"]).float()).all()
    assert list(s2.bad_shards) == [bad.name] and "non-finite" in s2.bad_shards[bad.name]
    with pytest.raises(RetrievalError, match="no features"):
        s2.features(["c"])


def test_unreadable_shard_excludes_only_its_pairs_and_is_retried(tmp_path: Path) -> None:
    s = FeatureStore(tmp_path / "f", "fp", H, L)
    h_ab = put(s, ["a", "b"])
    put(s, ["c"], seed=1)
    first = _shard_dirs(tmp_path / "f")[0]
    good = (first / "h.npy").read_bytes()
    (first / "h.npy").write_bytes(good[:20])  # truncated: unreadable
    s2 = FeatureStore(tmp_path / "f", "fp", retry_bad_s=0.0)
    assert len(s2) == 1 and "c" in s2 and "a" not in s2
    assert "unreadable" in s2.bad_shards[first.name]
    assert s2.refresh() is False  # still broken: nothing new
    (first / "h.npy").write_bytes(good)  # repaired while serving
    assert s2.refresh() is True and not s2.bad_shards
    assert torch.equal(s2.features(["a"])[0], h_ab[0].half()) and len(s2) == 3
