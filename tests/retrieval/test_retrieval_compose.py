"""compose.TextToImage: batch == single, λ from scores, exclusion, degradation to mode off."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.compose import ImageRequest, TextToImage, build_text_to_image


@pytest.fixture()
def t2i(pipe, shared_db) -> TextToImage:  # type: ignore[no-untyped-def]
    db, _ = shared_db
    # min_score 0: the tiny random model's scores are not the shipped model's (the default's)
    return TextToImage(pipe, db, retrieval_timeout_s=30.0, min_score=0.0)


def test_batch_equals_single(t2i: TextToImage, shared_db) -> None:  # type: ignore[no-untyped-def]
    _, rows = shared_db
    reqs = [
        ImageRequest(rows[0]["caption"], seed=1, mode="adapter", k=3),
        ImageRequest("a green square", seed=2, mode="adapter", k=1),
        ImageRequest(rows[5]["caption"], seed=3, mode="inject", k=2),
        ImageRequest("a red triangle", seed=4, mode="off"),
        ImageRequest(rows[0]["caption"], seed=5, mode="adapter", k=2, exclude_ids=frozenset()),
    ]
    batch, timings = t2i.generate(reqs)
    assert set(timings) == {"text", "retrieval", "unet", "vae"}
    for r, b in zip(reqs, batch):
        (single,), _ = t2i.generate([r])
        assert single.retrieved == b.retrieved and single.retrieval_status == b.retrieval_status
        assert np.abs(single.image.astype(int) - b.image.astype(int)).max() <= 1, r
    assert [b.retrieval_status for b in batch] == ["ok", "ok", "ok", "off", "ok"]
    assert [len(b.retrieved) for b in batch] == [3, 1, 2, 0, 2]
    assert batch[0].retrieved[0].caption == rows[0]["caption"]


def test_retrieval_changes_the_image(t2i: TextToImage, shared_db) -> None:  # type: ignore[no-untyped-def]
    _, rows = shared_db
    on, off = t2i.generate(
        [ImageRequest(rows[2]["caption"], 7, "adapter", 2), ImageRequest(rows[2]["caption"], 7, "off")]
    )[0]
    assert on.image.shape == (64, 64, 3) and on.image.dtype == np.uint8
    assert np.abs(on.image.astype(int) - off.image.astype(int)).max() > 0


def test_exclude_ids_never_returns_the_pair(t2i: TextToImage, shared_db) -> None:  # type: ignore[no-untyped-def]
    _, rows = shared_db
    cap = rows[4]["caption"]
    (first,), _ = t2i.generate([ImageRequest(cap, 0, "adapter", 1)])
    own = first.retrieved[0].id
    assert first.retrieved[0].caption == cap
    (ex,), _ = t2i.generate([ImageRequest(cap, 0, "adapter", 8, exclude_ids=frozenset({own}))])
    assert own not in [n.id for n in ex.retrieved] and len(ex.retrieved) == 8


def test_lambda_zero_below_min_score(pipe, shared_db) -> None:  # type: ignore[no-untyped-def]
    db, rows = shared_db
    cap = rows[1]["caption"]
    strict = TextToImage(
        pipe, db, min_score=1.0
    )  # nothing but an exact match passes... not even that in fp32
    loose = TextToImage(pipe, db, min_score=0.0)
    (s,), _ = strict.generate(
        [
            ImageRequest(
                cap,
                3,
                "adapter",
                2,
                exclude_ids=frozenset({db.search(pipe.encode_text([cap]).pooled, 1)[0][0].id}),
            )
        ]
    )
    (l,), _ = loose.generate(
        [
            ImageRequest(
                cap,
                3,
                "adapter",
                2,
                exclude_ids=frozenset({db.search(pipe.encode_text([cap]).pooled, 1)[0][0].id}),
            )
        ]
    )
    assert [(n.id, n.score) for n in s.retrieved] == [(n.id, n.score) for n in l.retrieved]
    assert all(n.score < 1.0 and n.weight == 0.0 for n in s.retrieved)
    assert s.retrieval_status == "weak" and l.retrieval_status == "ok"
    # λ=0: the neighbours' features do not reach the image, so it equals the adapter with zero features
    import torch

    text = pipe.encode_text([cap])
    zero = pipe.generate(
        text, [3], "adapter", torch.zeros((1, 2, *pipe.h_shape)), torch.zeros((1, 2))
    ).images[0]
    assert np.array_equal(s.image, zero)
    assert not np.array_equal(l.image, zero)


class _Broken:
    name = "broken"

    def search(self, *a: object, **k: object) -> None:
        raise ConnectionError("qdrant is down")


class _Slow:
    name = "slow"

    def search(self, *a: object, **k: object) -> None:
        time.sleep(2)


@pytest.mark.parametrize("bad", [_Broken, _Slow])
def test_index_failure_degrades_to_off(pipe, shared_db, bad, caplog) -> None:  # type: ignore[no-untyped-def]
    db, rows = shared_db
    t = TextToImage(pipe, db, retrieval_timeout_s=0.3)
    (off,), _ = t.generate([ImageRequest(rows[0]["caption"], 9, "off")])
    real, db.index = db.index, bad()  # the index now fails (exception) or hangs (timeout)
    try:
        (res, res2), _timings = t.generate(
            [ImageRequest(rows[0]["caption"], 9, "adapter", 2), ImageRequest("x", 1, "off")]
        )
    finally:
        db.index = real
    assert res.retrieval_status == "unavailable" and res.retrieved == []
    assert res2.retrieval_status == "off"
    assert np.abs(res.image.astype(int) - off.image.astype(int)).max() <= 1  # batch 2 vs 1
    assert t.unavailable_total == 1
    assert "retrieval" in caplog.text and ("down" in caplog.text or "timed out" in caplog.text)


def test_build_without_database_reports_unavailable(model_dir: Path, tmp_path: Path) -> None:
    t = build_text_to_image(model_dir, db_path=tmp_path / "empty")
    (r,), _ = t.generate([ImageRequest("a red circle", 0)])
    assert r.retrieval_status == "unavailable" and r.image.shape == (t.resolution, t.resolution, 3)
    t.close()


def test_build_refuses_features_of_another_model(other_model_dir, shared_db) -> None:  # type: ignore[no-untyped-def]
    from retrieval.types import FingerprintMismatchError

    db, _ = shared_db
    with pytest.raises(FingerprintMismatchError):
        build_text_to_image(other_model_dir, db_path=db.store.root.parent)


def test_invalid_requests_raise(t2i: TextToImage) -> None:
    with pytest.raises(ValueError, match="k must be in 1..8"):
        t2i.generate([ImageRequest("x", 0, "adapter", k=9)])


def test_off_rows_untouched_in_mixed_batch_with_trained_bias(model_dir: Path, shared_db) -> None:  # type: ignore[no-untyped-def]
    """A trained adapter has a non-zero output bias: an 'off' (or unavailable) row sharing a
    batch with adapter rows must still equal the same request run alone."""
    import torch

    from engines.pipeline import OneStepPipeline

    db, rows = shared_db
    p = OneStepPipeline.from_pretrained(model_dir)
    with torch.no_grad():
        p.hadapter.proj_out.bias.fill_(0.5)
    t = TextToImage(p, db)
    off = ImageRequest(rows[3]["caption"], 11, "off")
    batch, _ = t.generate([ImageRequest(rows[0]["caption"], 1, "adapter", 2), off])
    (alone,), _ = t.generate([off])
    assert np.abs(batch[1].image.astype(int) - alone.image.astype(int)).max() <= 1


def test_build_uses_engines_backends_without_fallback(model_dir: Path, ingested, db_config) -> None:  # type: ignore[no-untyped-def]
    from engines.backends import BackendUnavailable

    db, rows = ingested
    db.close()  # one writer/reader process per Edge shard or local-mode path
    t = build_text_to_image(model_dir, backend="torch", db_config=db_config)
    assert t.backend_name == "torch" and t.model_name
    (r,), timings = t.generate([ImageRequest(rows[2]["caption"], 0, "adapter", 1)])
    assert r.retrieval_status == "ok" and r.retrieved[0].caption == rows[2]["caption"]
    assert set(timings) == {"text", "retrieval", "unet", "vae"}
    with pytest.raises(BackendUnavailable, match="onnx_dir"):
        build_text_to_image(model_dir, backend="onnxruntime", db_config=db_config)
    t.close()
