"""Fixtures of the service tests: a tiny random model dir and real uvicorn servers on
loopback (subprocesses running tests/service/service_server_main.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from service_servers import Server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.random_models import write_model_dir

    path = tmp_path_factory.mktemp("service-model") / "tiny"
    write_model_dir(path, "tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def ingested_db(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded database (Qdrant Edge + features) with 6 captioned shapes."""
    from PIL import Image, ImageDraw

    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest

    root = tmp_path_factory.mktemp("service-db")
    rows = []
    for i, (colour, shape) in enumerate(
        [
            ("red", "circle"),
            ("blue", "square"),
            ("green", "circle"),
            ("yellow", "square"),
            ("red", "square"),
            ("blue", "circle"),
        ]
    ):
        img = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(img)
        (draw.ellipse if shape == "circle" else draw.rectangle)((16, 16, 48, 48), fill=colour)
        img.save(root / f"{i}.png")
        rows.append({"file": f"{i}.png", "caption": f"a {colour} {shape}"})
    pipe = OneStepPipeline.from_pretrained(tiny_model_dir)
    db = open_db_for_pipeline(DbConfig(db_path=root / "db"), pipe, create=True)
    ingest(pipe, db, root, rows, batch=8, progress=False)
    db.close()
    return root / "db"


@pytest.fixture(scope="session")
def real_server(
    tiny_model_dir: Path, ingested_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real tiny pipeline and retrieval over 6 pairs; a 150 ms batching window so
    concurrent clients share batches."""
    srv = Server(
        {
            "RAGTURBO_MODEL_DIR": str(tiny_model_dir),
            "RAGTURBO_MAX_BATCH": "8",
            "RAGTURBO_DB_PATH": str(ingested_db),
            "RAGTURBO_MAX_WAIT_MS": "150",
            "RAGTURBO_MAX_QUEUE": "64",
        },
        "real",
        tmp_path_factory.mktemp("real-server"),
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
