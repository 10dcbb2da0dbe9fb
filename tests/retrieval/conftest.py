"""Fixtures for the retrieval tests: a tiny random model, small rendered PNGs and captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 30, 220),
    "green": (30, 200, 30),
    "yellow": (230, 220, 20),
}
SHAPES = ("circle", "square", "triangle")


def render(colour: tuple[int, int, int], shape: str, size: int = 64, seed: int = 0) -> np.ndarray:
    """A 64x64 RGB picture of a coloured shape on a grey background (uint8 (H,W,3))."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 128, np.uint8) + rng.integers(
        0, 8, (size, size, 3), dtype=np.uint8
    )
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    if shape == "circle":
        m = (yy - c) ** 2 + (xx - c) ** 2 < (size / 3) ** 2
    elif shape == "square":
        m = (abs(yy - c) < size / 3) & (abs(xx - c) < size / 3)
    else:
        m = (yy > size / 5) & (abs(xx - c) < (yy - size / 5) / 2)
    img[m] = colour
    return img


def make_pairs(root: Path, n: int, start: int = 0) -> list[dict[str, str]]:
    """Write n PNGs under root and return their caption rows."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    names = list(COLOURS)
    for i in range(start, start + n):
        col, shp = names[i % len(names)], SHAPES[(i // len(names)) % len(SHAPES)]
        Image.fromarray(render(COLOURS[col], shp, seed=i)).save(root / f"img{i}.png")
        rows.append({"file": f"img{i}.png", "caption": f"a {col} {shp}, picture {i}"})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.random_models import write_model_dir

    return write_model_dir(tmp_path_factory.mktemp("model") / "tiny", "tiny", adapter_init_std=0.02)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.random_models import write_model_dir

    return write_model_dir(
        tmp_path_factory.mktemp("model2") / "tiny", "tiny", seed=1, adapter_init_std=0.02
    )


@pytest.fixture(scope="session")
def pipe(model_dir: Path):  # type: ignore[no-untyped-def]
    from engines.pipeline import OneStepPipeline

    return OneStepPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("pairs")
    return root, make_pairs(root, 16)


@pytest.fixture(params=["edge", "qdrant-client-local"])
def db_config(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Both index backends: Qdrant Edge, and qdrant-client *local mode* (on-disk path)."""
    from retrieval.db import DbConfig

    if request.param == "edge":
        return DbConfig(db_path=tmp_path / "db")
    return DbConfig(db_path=tmp_path / "db", qdrant_local=str(tmp_path / "qdrant-local"))


@pytest.fixture()
def ingested(pipe, dataset, db_config):  # type: ignore[no-untyped-def]
    """A database holding the 16 fixture pairs; yields (db, rows)."""
    from retrieval.db import open_db_for_pipeline
    from retrieval.ingest import ingest

    root, rows = dataset
    db = open_db_for_pipeline(db_config, pipe, create=True)
    ingest(pipe, db, root, rows, batch=8, commit_every=8, progress=False)
    yield db, rows
    db.close()


@pytest.fixture(scope="session", params=["edge", "qdrant-client-local"])
def shared_db(
    request: pytest.FixtureRequest, pipe, dataset, tmp_path_factory: pytest.TempPathFactory
):  # type: ignore[no-untyped-def]
    """Read-only database of the 16 fixture pairs, one per backend, shared by the session.

    Tests that use it must leave it as they found it; tests that write use ``ingested``.
    """
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest

    tmp = tmp_path_factory.mktemp(f"shared-{request.param}")
    cfg = DbConfig(
        db_path=tmp / "db", qdrant_local=None if request.param == "edge" else str(tmp / "local")
    )
    root, rows = dataset
    db = open_db_for_pipeline(cfg, pipe, create=True)
    ingest(pipe, db, root, rows, batch=16, commit_every=16, progress=False)
    yield db, rows
    db.close()
