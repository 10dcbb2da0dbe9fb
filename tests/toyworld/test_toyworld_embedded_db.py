"""First-start retrieval DB of the embedded default: built once, no-op after, rebuilt on a model change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_embedded_db_builds_once_and_follows_model_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.default_model as dm
    from engines.pipeline import OneStepPipeline
    from engines.random_models import write_model_dir
    from retrieval.db import DbConfig, open_db_for_pipeline
    from toyworld.embedded_db import STAMP, ensure_embedded_db

    shipped = write_model_dir(tmp_path / "shipped", "tiny", seed=0)
    monkeypatch.setattr(dm, "SHIPPED", shipped)
    monkeypatch.delenv("RAGTURBO_MODEL_DIR", raising=False)
    monkeypatch.delenv("RAGTURBO_QDRANT_URL", raising=False)
    db = tmp_path / "data"

    first = ensure_embedded_db(db, n=12, batch=8)
    assert first.startswith("built: 12 pairs added")
    assert ensure_embedded_db(db, n=12, batch=8).startswith("up to date")

    # A new shipped model (other weights): the stored features are rebuilt for it.
    shutil.rmtree(shipped)
    write_model_dir(shipped, "tiny", seed=1)
    again = ensure_embedded_db(db, n=12, batch=8)
    assert again.startswith("built: 0 pairs added, 12 already present")
    pipe = OneStepPipeline.from_pretrained(shipped)
    assert json.loads((db / STAMP).read_text())["fingerprint"] == pipe.fingerprint
    database = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        hits = database.search(pipe.encode_text(["a big red circle"]).pooled, 3)
        assert len(hits[0]) == 3
    finally:
        database.close()

    monkeypatch.setenv("RAGTURBO_MODEL_DIR", str(shipped))
    assert ensure_embedded_db(db, n=12).startswith("skipped")


def test_parallel_render_writes_the_split_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-start renderer (workers that write PNGs) gives make_split's images and captions."""
    import numpy as np
    from PIL import Image

    import toyworld.embedded_db as edb
    from toyworld.models.adapter import write_folder_dataset
    from toyworld.models.data import make_split

    monkeypatch.setattr(edb, "RENDER_CHUNK", 7)
    fast = edb.write_retrieval_folder(tmp_path / "fast", 30, workers=2, progress=False)
    sp = make_split("retrieval", 30, workers=1)
    assert sp.images is not None
    ref = write_folder_dataset(tmp_path / "ref", sp.images, sp.captions)
    assert (fast / "captions.jsonl").read_text() == (ref / "captions.jsonl").read_text()
    for i in range(30):
        a = np.asarray(Image.open(fast / f"{i:06d}.png"))
        assert np.array_equal(a, sp.images[i]), i
