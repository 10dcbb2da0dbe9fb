"""The embedded database's precomputed pairs: keyed by exactly the encoders they depend on,
loaded at first start when they match, and never used stale (a changed encoder or generator
builds from scratch, with a log line saying why)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.default_model import SHIPPED

needs_shipped = pytest.mark.skipif(not (SHIPPED / "unet" / "config.json").is_file(), reason="no shipped toy model")


def _edit_tensor(model: Path, comp: str, prefix: str) -> str:
    """Add 1e-3 to the first tensor of ``comp`` whose name starts with ``prefix``; its name."""
    from safetensors.torch import load_file, save_file

    (f,) = [p for p in (model / comp).iterdir() if p.suffix == ".safetensors"]
    tensors = load_file(str(f))
    key = next(k for k in sorted(tensors) if k.startswith(prefix))
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, str(f))
    return key


def test_encoder_fingerprint_follows_the_encoders_only(tmp_path: Path) -> None:
    from engines.random_models import write_model_dir
    from toyworld.precomputed import encoder_fingerprint

    model = write_model_dir(tmp_path / "m", "tiny", seed=0)
    base = encoder_fingerprint(model)
    assert base == encoder_fingerprint(model)
    # what a new adapter or decoder changes: the key stays
    _edit_tensor(model, "unet", "up_blocks.")
    _edit_tensor(model, "vae", "decoder.")
    _edit_tensor(model, "hadapter", "")
    assert encoder_fingerprint(model) == base
    # any encoder tensor: the key changes
    for comp, prefix in (("unet", "down_blocks."), ("unet", "mid_block."), ("vae", "encoder."),
                         ("text_encoder", "")):
        _edit_tensor(model, comp, prefix)
        new = encoder_fingerprint(model)
        assert new != base, (comp, prefix)
        base = new


def test_quantisation_error_is_bounded() -> None:
    from toyworld.precomputed import QMAX, dequantize, quantize, rel_l2

    x = np.random.default_rng(0).normal(size=(64, 128, 4, 4)).astype(np.float32) * 3
    q, amax = quantize(x)
    assert q.dtype == np.int8 and np.abs(q).max() <= QMAX and amax.shape == (64, 128)
    err = rel_l2(dequantize(q, amax), x)
    assert err.max() < 0.03  # 6 bits per value, one scale per (row, channel)


@needs_shipped
def test_shipped_assets_match_the_shipped_model() -> None:
    """A shipped model whose encoders changed needs `ragturbo toyworld embedded-assets`."""
    from toyworld.precomputed import ASSETS, encoder_fingerprint, read_meta, usable

    meta = read_meta(ASSETS)
    assert meta is not None and meta["n"] == 10000
    assert usable(ASSETS, encoder_fingerprint(SHIPPED), 10000) == (True, "ok")
    assert max(p.stat().st_size for p in ASSETS.iterdir()) < 10 * 2**20
    assert meta["rel_l2_against_fp16"]["h_max"] < 0.03


N = 24


@pytest.fixture(scope="module")
def exact_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toyworld.embedded_db import ensure_embedded_db

    if not (SHIPPED / "unet" / "config.json").is_file():
        pytest.skip("no shipped toy model")
    db = tmp_path_factory.mktemp("exact") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAGTURBO_MODEL_DIR", raising=False)
        mp.delenv("RAGTURBO_QDRANT_URL", raising=False)
        msg = ensure_embedded_db(db, n=N, batch=8, progress=False, workers=1, vae="fp32", exact=True)
    assert "built from the generator" in msg, msg
    return db


def _open(db: Path) -> Any:
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline

    pipe = OneStepPipeline.from_pretrained(SHIPPED)
    return pipe, open_db_for_pipeline(DbConfig(db_path=db), pipe)


@needs_shipped
def test_first_start_loads_the_precomputed_pairs(exact_db: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Same ids, captions and neighbours as an exact build; H within the format's error."""
    import torch

    from toyworld.embedded_db import STAMP, ensure_embedded_db

    monkeypatch.delenv("RAGTURBO_MODEL_DIR", raising=False)
    monkeypatch.delenv("RAGTURBO_QDRANT_URL", raising=False)
    db = tmp_path / "data"
    msg = ensure_embedded_db(db, n=N, progress=False)
    assert msg.startswith(f"built: {N} pairs added") and "precomputed pairs" in msg, msg
    assert json.loads((db / STAMP).read_text())["source"] == "precomputed pairs"
    assert ensure_embedded_db(db, n=N).startswith("up to date")
    pipe, fast = _open(db)
    _, ref = _open(exact_db)
    try:
        ids = sorted(ref.store.ids())
        assert sorted(fast.store.ids()) == ids
        assert [fast.store.row(i)["caption"] for i in ids] == [ref.store.row(i)["caption"] for i in ids]
        a, b = ref.store.features(ids).float(), fast.store.features(ids).float()
        rel = ((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1))
        assert float(rel.max()) < 0.03, rel
        caps = [ref.store.row(i)["caption"] for i in ids]
        q = pipe.encode_text([*caps, "a big red circle"]).pooled
        for r_ref, r_new in zip(ref.search(q, 2), fast.search(q, 2), strict=True):
            assert [h.score for h in r_new] == pytest.approx([h.score for h in r_ref], abs=2e-3)
            if r_ref[0].score > r_ref[1].score + 2e-3:
                assert r_new[0].id == r_ref[0].id
        assert torch.isfinite(b).all()
    finally:
        fast.close()
        ref.close()


@needs_shipped
def test_stale_assets_are_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    import toyworld.precomputed as pc
    from toyworld.embedded_db import ensure_embedded_db

    monkeypatch.delenv("RAGTURBO_MODEL_DIR", raising=False)
    monkeypatch.delenv("RAGTURBO_QDRANT_URL", raising=False)
    stale = tmp_path / "assets"
    shutil.copytree(pc.ASSETS, stale)
    meta = json.loads((stale / "meta.json").read_text())
    (stale / "meta.json").write_text(json.dumps({**meta, "key": "0000000000000000"}))
    monkeypatch.setattr(pc, "ASSETS", stale)
    with caplog.at_level(logging.WARNING):
        msg = ensure_embedded_db(tmp_path / "data", n=4, batch=4, progress=False, workers=1)
    assert "built from the generator" in msg, msg
    assert "made for encoder fingerprint 0000000000000000" in caplog.text


@needs_shipped
def test_spot_check_catches_values_the_model_does_not_give(tmp_path: Path) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.precomputed import ASSETS, load_pairs, spot_check

    pipe = OneStepPipeline.from_pretrained(SHIPPED)
    pairs = load_pairs(ASSETS, N)
    assert spot_check(pipe, pairs, tmp_path, N) is None
    pairs.h[0] *= 1.2
    assert "pair 0: caption vector off by" in str(spot_check(pipe, pairs, tmp_path, N))
    pairs = load_pairs(ASSETS, N)
    pairs.ids[N - 1] = "00000000-0000-5000-8000-000000000000"
    assert f"pair {N - 1}: the generator gives point id" in str(spot_check(pipe, pairs, tmp_path, N))


@needs_shipped
def test_a_new_decoder_reloads_and_a_new_encoder_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """What a retrained adapter/decoder does to an existing first-start DB, and what an encoder change does."""
    import engines.default_model as dm
    from toyworld.embedded_db import ensure_embedded_db

    monkeypatch.delenv("RAGTURBO_MODEL_DIR", raising=False)
    monkeypatch.delenv("RAGTURBO_QDRANT_URL", raising=False)
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model, ignore=shutil.ignore_patterns(".fingerprint-cache*"))
    monkeypatch.setattr(dm, "SHIPPED", model)
    db = tmp_path / "data"
    assert "precomputed pairs" in ensure_embedded_db(db, n=8, progress=False)
    _edit_tensor(model, "unet", "up_blocks.")
    with caplog.at_level(logging.WARNING):
        msg = ensure_embedded_db(db, n=8, progress=False)
    assert "but not its encoders: replacing the stored pairs" in caplog.text
    assert msg.startswith("built: 8 pairs added") and "precomputed pairs" in msg, msg
    caplog.clear()
    _edit_tensor(model, "unet", "down_blocks.")
    with caplog.at_level(logging.WARNING):
        msg = ensure_embedded_db(db, n=8, progress=False, workers=1)
    assert "rebuilding the 8 stored pairs" in caplog.text and "an encoder changed" in caplog.text
    assert msg.startswith("built: 8 pairs added") and "built from the generator" in msg, msg
