"""The embedded default's retrieval database, built on first start.

``make run`` calls ``ragturbo toyworld embedded-db`` before serving: it regenerates the
retrieval split the shipped model was evaluated with (deterministic, so nothing is
shipped but the generator) and ingests it into Qdrant Edge + the feature store under
the data directory. A stamp ``<db>/toyworld-db.json`` records the model fingerprint
and the size; a later start with the same stamp does nothing, and a changed shipped
model rebuilds the stored features (``rebuild_features``) before adding what is new.
Skipped when the operator points RAGTURBO_MODEL_DIR at another model.

Speed (docs/toyworld.md, "First start"): the renders run in worker processes that also
write the PNG files, the encoders run in batches of ``batch`` pairs, and glibc's malloc
is told to keep freed memory instead of returning every large activation to the kernel
(without that, each batch's tensors are fresh ``mmap``s and page faults take a third
of the CPU time). Both stages show a tqdm progress bar.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
from multiprocessing import get_context
from pathlib import Path

log = logging.getLogger(__name__)

STAMP = "toyworld-db.json"
RENDER_CHUNK = 250
"""Items rendered and written per worker task (small enough for a smooth progress bar)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit


def keep_freed_memory() -> bool:
    """Ask glibc to serve allocations up to 32 MiB from the heap and never trim it.

    Torch frees each batch's activations and allocates the next batch's; by default
    those blocks are ``mmap``ed and unmapped every time (~2000 page faults a pair here).
    Process-wide and harmless for a one-shot build; a no-op off glibc. Returns whether
    it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return False
    return ok


def _render_chunk(args: tuple[Path, int, int]) -> list[str]:
    """Worker: render items lo..hi-1 of the retrieval split, write their PNGs, return captions."""
    from PIL import Image

    from toyworld.models.data import _retrieval_item

    folder, lo, hi = args
    caps = []
    for i in range(lo, hi):
        img, cap, _ = _retrieval_item(i)
        Image.fromarray(img).save(folder / f"{i:06d}.png", compress_level=1)
        caps.append(cap)
    return caps


def write_retrieval_folder(folder: Path, n: int, workers: int | None = None, progress: bool = True) -> Path:
    """Items 0..n-1 of the retrieval split as PNGs + ``captions.jsonl`` (written last).

    Same files and captions as ``make_split("retrieval", n)`` followed by
    ``write_folder_dataset`` (tested), without holding every image in memory.
    """
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(folder, lo, min(n, lo + RENDER_CHUNK)) for lo in range(0, n, RENDER_CHUNK)]
    caps: list[str] = []
    with tqdm(total=n, unit="img", desc="render", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with get_context("fork").Pool(workers) as pool:
                for part in pool.imap(_render_chunk, jobs):
                    caps += part
                    bar.update(len(part))
        else:
            for job in jobs:
                part = _render_chunk(job)
                caps += part
                bar.update(len(part))
    tmp = folder / "captions.jsonl.tmp"
    with tmp.open("w") as f:
        for i, cap in enumerate(caps):
            f.write(json.dumps({"file": f"{i:06d}.png", "caption": cap, "id": f"train-{i}"}) + "\n")
    tmp.replace(folder / "captions.jsonl")
    return folder


def ensure_embedded_db(
    db_path: str | Path = "data", n: int = 10000, batch: int = 64, progress: bool = True
) -> str:
    """Build or refresh the toy retrieval DB for the shipped model; returns what it did."""
    import time

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

    t0 = time.perf_counter()
    keep_freed_memory()
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest, read_captions, rebuild_features
    from retrieval.types import FingerprintMismatchError

    pipe = OneStepPipeline.from_pretrained(model)
    cfg = DbConfig(db_path=db)
    try:
        database = open_db_for_pipeline(cfg, pipe, create=True)
    except FingerprintMismatchError:
        log.warning("the shipped model changed: rebuilding stored H-features for %s", fp)
        rebuild_features(pipe, cfg, batch=batch, progress=progress)
        database = open_db_for_pipeline(cfg, pipe, create=True)
    folder = db / "toyworld-retrieval"
    caps_file = folder / "captions.jsonl"
    if not caps_file.is_file() or sum(1 for _ in caps_file.open()) != n:
        write_retrieval_folder(folder, n, progress=progress)
    try:
        report = ingest(
            pipe, database, folder, read_captions(caps_file), batch=batch, progress=progress
        )
    finally:
        database.close()
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(want))
    tmp.replace(stamp)
    return (
        f"built: {report.added} pairs added, {report.already_present} already present, "
        f"{len(report.rejects)} rejected, model {fp}, {time.perf_counter() - t0:.1f} s"
    )
