"""The embedded default's retrieval database, built on first start.

``make run`` calls ``ragturbo serve --embedded-db`` (or ``ragturbo toyworld embedded-db``)
before serving: the shipped model's 10 000-pair retrieval split goes into Qdrant Edge + the
feature store under the data directory, from the precomputed pairs (``toyworld.precomputed``)
or, when they do not apply or with ``exact=True``, from the generator (``toyworld.pair_build``).
A stamp ``<db>/toyworld-db.json`` (model fingerprint, size) makes a later start a no-op; a
changed shipped model rebuilds the stored features first. Skipped when RAGTURBO_MODEL_DIR
points at another model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from toyworld.pair_build import (
    ENCODE_BATCH,
    STAMP,
    VaePrecision,
    build_pairs,
    keep_freed_memory,
    resolve_vae_precision,
)

log = logging.getLogger(__name__)


def ensure_embedded_db(
    db_path: str | Path = "data", n: int = 10000, batch: int = ENCODE_BATCH, progress: bool = True,
    workers: int | None = None, vae: VaePrecision = "auto", exact: bool = False,
) -> str:
    """Build or refresh the toy retrieval DB for the shipped model; returns what it did.

    Loads the precomputed pairs (``toyworld.precomputed``) when they match the model's
    encoders and pass the spot check; otherwise (or with ``exact``) builds from the generator.
    """
    from engines.default_model import default_model_dir, shipped_model_dir
    from engines.modeldir import fingerprint

    if os.environ.get("RAGTURBO_MODEL_DIR"):
        return "skipped: RAGTURBO_MODEL_DIR is set (ingest your own pairs with `ragturbo ingest`)"
    if os.environ.get("RAGTURBO_QDRANT_URL"):
        return "skipped: RAGTURBO_QDRANT_URL is set (the server's collection is the operator's)"
    db = Path(db_path)
    model, shipped = default_model_dir(db), shipped_model_dir()
    if model != shipped:
        return f"skipped: no shipped toy model at {shipped}"
    fp = fingerprint(model)
    stamp = db / STAMP
    want = {"fingerprint": fp, "n": n}
    if stamp.is_file():
        try:
            if {k: v for k, v in json.loads(stamp.read_text()).items() if k in want} == want:
                return f"up to date ({n} pairs, model {fp})"
        except (json.JSONDecodeError, AttributeError):
            pass

    t0 = time.perf_counter()
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import rebuild_features
    from retrieval.types import FingerprintMismatchError

    pipe = OneStepPipeline.from_pretrained(model)
    cfg = DbConfig(db_path=db)
    try:
        database = open_db_for_pipeline(cfg, pipe, create=True)
    except FingerprintMismatchError as e:
        if _only_precomputed(db, n):  # nothing of the user's: start over (exact, no stale latents)
            from toyworld.precomputed import ASSETS, encoder_fingerprint, usable

            same, why = usable(ASSETS, encoder_fingerprint(model), n)
            log.warning("the shipped model changed (features %s -> %s)%s", e.stored, fp,
                        ", but not its encoders: replacing the stored pairs with the precomputed ones"
                        if same and not exact else f": rebuilding the {n} stored pairs ({why})")
            shutil.rmtree(db / "features"), shutil.rmtree(db / "edge", ignore_errors=True)
        else:
            log.warning("the shipped model changed: rebuilding stored H-features for %s", fp)
            rebuild_features(pipe, cfg, batch=batch, progress=progress)
        database = open_db_for_pipeline(cfg, pipe, create=True)
    t_open = time.perf_counter() - t0
    try:
        loaded = None if exact else _load_precomputed(pipe, model, database, db, n)
        if loaded is None:
            keep_freed_memory()
            added, present = build_pairs(model, database, db / "toyworld-retrieval", n, batch=batch,
                                         workers=workers, progress=progress, vae=vae)
            how = f"built from the generator, VAE {resolve_vae_precision(vae)}"
        else:
            added, present, how = loaded
    finally:
        database.close()
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({**want, "source": how.split(" (")[0]}))
    tmp.replace(stamp)
    return (
        f"built: {added} pairs added, {present} already present, 0 rejected, model {fp}, "
        f"{how}; {time.perf_counter() - t0:.1f} s (model load + open {t_open:.1f} s)"
    )


def _only_precomputed(db: Path, n: int) -> bool:
    """True when ``db`` holds exactly the ``n`` precomputed pairs (its stamp and manifest say
    so): nothing the user ingested would be lost by starting it over."""
    try:
        stamp = json.loads((db / STAMP).read_text())
        shards = json.loads((db / "features" / "manifest.json").read_text())["shards"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False
    ours = str(stamp.get("source", "")).startswith("precomputed") and stamp.get("n") == n
    return ours and sum(int(s["count"]) for s in shards) == n


def _load_precomputed(pipe: Any, model: Path, database: Any, db: Path, n: int) -> tuple[int, int, str] | None:
    """The precomputed pairs into ``database``, or None (logged: why) when they do not apply."""
    from toyworld.precomputed import ASSETS, load_into

    res = load_into(pipe, model, database, db / "toyworld-retrieval", n, ASSETS)
    if isinstance(res, str):
        log.warning("not using the precomputed retrieval pairs: %s; building %d pairs from the "
                    "generator instead (about a minute on 2 cores)", res, n)
        return None
    added, present, secs = res
    split = ", ".join(f"{k} {v:.1f} s" for k, v in secs.items())
    return added, present, f"precomputed pairs (6-bit H-features, spot-checked; {split})"
