"""The embedded default's retrieval database, built on first start.

``make run`` calls ``ragturbo toyworld embedded-db`` before serving: it regenerates the
retrieval split the shipped model was evaluated with (deterministic, so nothing is
shipped but the generator) and ingests it into Qdrant Edge + the feature store under
the data directory. A stamp ``<db>/toyworld-db.json`` records the model fingerprint
and the size; a later start with the same stamp does nothing, and a changed shipped
model rebuilds the stored features (``rebuild_features``) before adding what is new.
Skipped when the operator points RAGTURBO_MODEL_DIR at another model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

STAMP = "toyworld-db.json"


def ensure_embedded_db(db_path: str | Path = "data", n: int = 10000, batch: int = 128) -> str:
    """Build or refresh the toy retrieval DB for the shipped model; returns what it did."""
    from engines.default_model import SHIPPED, default_model_dir
    from engines.modeldir import fingerprint

    if os.environ.get("RAGTURBO_MODEL_DIR"):
        return "skipped: RAGTURBO_MODEL_DIR is set (ingest your own pairs with `ragturbo ingest`)"
    if os.environ.get("RAGTURBO_QDRANT_URL"):
        return "skipped: RAGTURBO_QDRANT_URL is set (the server's collection is the operator's)"
    db = Path(db_path)
    model = default_model_dir(db)
    if model != SHIPPED:
        return f"skipped: no shipped toy model at {SHIPPED}"
    fp = fingerprint(model)
    stamp = db / STAMP
    want = {"fingerprint": fp, "n": n}
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == want:
                return f"up to date ({n} pairs, model {fp})"
        except json.JSONDecodeError:
            pass

    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest, read_captions, rebuild_features
    from retrieval.types import FingerprintMismatchError
    from toyworld.models.adapter import write_folder_dataset
    from toyworld.models.data import make_split

    pipe = OneStepPipeline.from_pretrained(model)
    cfg = DbConfig(db_path=db)
    try:
        database = open_db_for_pipeline(cfg, pipe, create=True)
    except FingerprintMismatchError:
        log.warning("the shipped model changed: rebuilding stored H-features for %s", fp)
        rebuild_features(pipe, cfg, batch=batch)
        database = open_db_for_pipeline(cfg, pipe, create=True)
    folder = db / "toyworld-retrieval"
    if not (folder / "captions.jsonl").is_file() or sum(1 for _ in (folder / "captions.jsonl").open()) != n:
        split = make_split("retrieval", n)
        assert split.images is not None
        write_folder_dataset(folder, split.images, split.captions)
    report = ingest(pipe, database, folder, read_captions(folder / "captions.jsonl"), batch=batch)
    database.close()
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(want))
    tmp.replace(stamp)
    return (
        f"built: {report.added} pairs added, {report.already_present} already present, "
        f"{len(report.rejects)} rejected, model {fp}, {report.seconds:.1f} s"
    )
