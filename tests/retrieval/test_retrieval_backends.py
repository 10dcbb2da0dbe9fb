"""Retrieval through every backend that runs on CPU: the database opens, neighbours come back.

This is the test that would have caught the graph backends serving without retrieval
(``open_db_for_pipeline`` read attributes only the torch pipeline had). ``fast`` searches
a device copy of the database inside its graph; its neighbours and images must equal the
host search's, and pairs ingested while it serves must reach the copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs

from engines.backends import create_backend
from retrieval.compose import ImageRequest, TextToImage, build_text_to_image
from retrieval.db import DbConfig, open_db_for_pipeline
from retrieval.ingest import ingest
from retrieval.resident import ResidentIndex

BACKENDS = ["torch", "torch-opt", "onnxruntime", "fast"]


@pytest.fixture(scope="module")
def world(model_dir: Path, pipe, dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[no-untyped-def]
    from engines.export_onnx import export_onnx

    root = tmp_path_factory.mktemp("backends-db")
    export_onnx(model_dir, root / "onnx", verify=False)
    cfg = DbConfig(db_path=root / "db")
    db = open_db_for_pipeline(cfg, pipe, create=True)
    images, rows = dataset
    ingest(pipe, db, images, rows, batch=16, commit_every=16, progress=False)
    db.close()
    return {"db": root / "db", "onnx": root / "onnx", "rows": rows}


def _t2i(name: str, model_dir: Path, world: dict, **kw) -> TextToImage:  # type: ignore[no-untyped-def]
    opts = {"onnx_dir": world["onnx"]} if name == "onnxruntime" else {}
    return build_text_to_image(model_dir, backend=name, db_path=world["db"], **opts, **kw)


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_serves_retrieval(name: str, model_dir: Path, world: dict) -> None:
    t2i = _t2i(name, model_dir, world)
    try:
        ok, why = t2i.retrieval_health()
        assert ok, why
        assert t2i.backend_name == name
        assert (t2i.resident is not None) == (name == "fast")  # fast searches inside its graph
        cap = world["rows"][3]["caption"]
        (res,), timings = t2i.generate([ImageRequest(cap, seed=1, mode="adapter", k=3)])
        assert res.retrieval_status == "ok"
        assert len(res.retrieved) == 3
        assert res.retrieved[0].caption == cap and res.retrieved[0].score > 0.99
        assert set(timings) >= {"text", "retrieval", "unet", "vae"}
    finally:
        t2i.close()


def test_fast_in_graph_search_equals_host_search(model_dir: Path, world: dict) -> None:
    """Same neighbours, scores and images whether the search runs in the graph or on the host."""
    t2i = _t2i("fast", model_dir, world)
    try:
        host = TextToImage(t2i.pipe, t2i.db, min_score=t2i.min_score)  # no device copy: the host path
        rows = world["rows"]
        reqs = [
            ImageRequest(rows[0]["caption"], 1, "adapter", 3),
            ImageRequest("a green square", 2, "inject", 2),
            ImageRequest(rows[7]["caption"], 3, "off", 1),
            ImageRequest("a blue circle, picture 9", 4, "adapter", 8),
        ]
        got, _ = t2i.generate(reqs)
        want, _ = host.generate(reqs)
        for g, w in zip(got, want):
            assert g.retrieval_status == w.retrieval_status
            assert [n.weight for n in g.retrieved] == pytest.approx([n.weight for n in w.retrieved], abs=1e-4)
            assert [n.id for n in g.retrieved] == [n.id for n in w.retrieved]
            assert np.allclose([n.score for n in g.retrieved], [n.score for n in w.retrieved], atol=1e-4)
            assert np.abs(g.image.astype(int) - w.image.astype(int)).max() <= 1
        on, off = t2i.generate([reqs[0], ImageRequest(reqs[0].prompt, 1, "off")])[0]
        assert np.abs(on.image.astype(int) - off.image.astype(int)).max() > 1  # retrieval acts
    finally:
        t2i.close()


def test_fast_picks_up_pairs_ingested_while_serving(model_dir: Path, pipe, dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images, rows = dataset
    cfg = DbConfig(db_path=tmp_path / "db", qdrant_local=str(tmp_path / "local"))
    db = open_db_for_pipeline(cfg, pipe, create=True)
    ingest(pipe, db, images, rows[:8], batch=8, commit_every=8, progress=False)
    be = create_backend("fast", model_dir)
    resident = ResidentIndex(be, db)
    resident.load()
    t2i = TextToImage(be, db, resident=resident, refresh_s=1e-6)  # refresh before every batch
    try:
        assert len(t2i.resident) == 8
        new_root = tmp_path / "new"
        new_rows = make_pairs(new_root, 2, start=100)
        ingest(pipe, db, new_root, new_rows, batch=2, commit_every=2, progress=False)
        (res,), _ = t2i.generate([ImageRequest(new_rows[1]["caption"], 0, "adapter", 1)])
        assert len(t2i.resident) == 10
        assert res.retrieved[0].caption == new_rows[1]["caption"]
    finally:
        t2i.close()


@pytest.mark.parametrize("name", ["torch", "fast"])
def test_a_database_that_cannot_open_is_reported(name: str, model_dir: Path, tmp_path: Path) -> None:
    t2i = build_text_to_image(model_dir, backend=name, db_path=tmp_path / "nothing-here")
    try:
        ok, why = t2i.retrieval_health()
        assert not ok and why  # a reason, for /readyz
        (res,), _ = t2i.generate([ImageRequest("a red circle", 0, "adapter", 1)])
        assert res.retrieval_status == "unavailable"
    finally:
        t2i.close()
