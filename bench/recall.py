"""Recall of the Qdrant path against exact search on REAL caption embeddings.

``ragturbo bench recall``. The database is N captions of the toy world's retrieval split
(``toyworld.models.data``: item i draws its scene and caption from
``default_rng([SPLIT_SEEDS["retrieval"], i])`` -- the captions of the shipped 10 000-pair DB
for i < 10 000, the same grammar beyond), embedded by the shipped model's text encoder
(pooled output, unit-normalised, as ingest stores them). Queries are the eval split's
prompts: other scenes, held-out phrasings ("coloured", "an image showing", "beneath",
"against ... background"), half of them naming a long-tail colour+shape pair.

Ground truth is exact cosine top-k in numpy (what ``engines.fast.gpu_index.GpuIndex``
computes on the device). Many captions are duplicates or near-duplicates (the 10K split
has ~8K distinct captions), so exact scores tie; recall is **tie-aware**:

* recall@1: the returned top-1 is a hit when its exact cosine (recomputed in numpy from the
  stored vector) is >= the exact top-1 score - ``TIE_EPS`` (1e-6);
* recall@k: the share of the k returned rows whose exact cosine is >= the exact k-th score
  - ``TIE_EPS`` (so any row tied with the true top-k counts).

Measured for Qdrant Edge (``retrieval.edge_index.EdgeIndex``) over a grid of HNSW build
settings (m, ef_construct) and search beams (hnsw_ef), with the shard's full-scan threshold
as shipped (10 000 KB: a segment whose vectors take less is scanned exactly, not searched
through the graph) and forced low so the graph is always used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TIE_EPS = 1e-6
SHIPPED_FULL_SCAN_KB = 10_000  # EdgeIndex's default full_scan_threshold_kb
FORCE_HNSW_KB = 10  # full-scan and indexing thresholds low enough that every segment is indexed


# ---------------------------------------------------------------- data
def db_captions(n: int) -> list[str]:
    """Captions of retrieval-split items 0..n-1 (identical to ``make_split("retrieval", n)``'s
    captions; the images are not rendered: rendering draws nothing from the generator)."""
    from toyworld.grammar import describe
    from toyworld.models.data import SPLIT_SEEDS
    from toyworld.scene import sample_scene

    out = []
    for i in range(n):
        rng = np.random.default_rng([SPLIT_SEEDS["retrieval"], i])
        scene = sample_scene(rng)
        out.append(describe(scene.spec, rng, held_out=False)[0])
    return out


def query_prompts(n: int) -> list[str]:
    """The first n eval prompts (held-out phrasings; odd items name a long-tail pair)."""
    from toyworld.models.data import make_split

    return list(make_split("eval", n, workers=1).captions)


def embed(pipe: object, captions: Sequence[str], batch: int = 512) -> np.ndarray:
    """Pooled text embeddings (n,D) float32, unit rows; each distinct caption encoded once."""
    uniq = list(dict.fromkeys(captions))
    pos = {c: i for i, c in enumerate(uniq)}
    parts = []
    for s in range(0, len(uniq), batch):
        pooled = pipe.encode_text(uniq[s : s + batch]).pooled  # type: ignore[attr-defined]
        parts.append(pooled.float().cpu().numpy())
    e = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    return e[[pos[c] for c in captions]].astype(np.float32)


def cached_embed(pipe: object, captions: Sequence[str], cache: Path | None, tag: str) -> np.ndarray:
    """``embed`` with an .npy cache keyed by the model fingerprint and the captions."""
    if cache is None:
        return embed(pipe, captions)
    h = hashlib.sha256(str(getattr(pipe, "fingerprint", "")).encode())
    for c in captions:
        h.update(c.encode() + b"\0")
    path = Path(cache) / f"{tag}-{len(captions)}-{h.hexdigest()[:12]}.npy"
    if path.is_file():
        return np.load(path)
    e = embed(pipe, captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, e)
    return e


# ---------------------------------------------------------------- exact search + recall
def exact_topk(
    db: np.ndarray, q: np.ndarray, k: int, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of unit rows: scores (B,k) float32 descending, indices (B,k)."""
    k = min(k, len(db))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(db), chunk):
        sc = q @ db[s : s + chunk].T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        ci = np.concatenate([best_i, part + s], 1)
        o = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return best_s, best_i


def tie_aware_recall(
    db: np.ndarray,
    q: np.ndarray,
    truth_scores: np.ndarray,
    returned: Sequence[Sequence[int]],
    k: int,
) -> float:
    """Mean over queries of |{returned[:k] rows with exact score >= truth k-th - TIE_EPS}| / k.

    k=1 is recall@1 with ties to the exact top-1 counted as hits. A query that returns
    fewer than k rows scores the missing ones as misses.
    """
    if not len(q):
        return float("nan")
    kth = truth_scores[:, k - 1]
    total = 0.0
    for b, rows in enumerate(returned):
        rows = [int(r) for r in list(rows)[:k]]
        if rows:
            s = db[rows] @ q[b]
            total += float(np.sum(s >= kth[b] - TIE_EPS))
    return total / (len(q) * k)


def tie_stats(truth_scores: np.ndarray) -> dict[str, float]:
    """How often the exact ranking is ambiguous: share of queries whose top-1 ties the 2nd."""
    if truth_scores.shape[1] < 2:
        return {"top1_tied": 0.0}
    return {"top1_tied": float(np.mean(truth_scores[:, 1] >= truth_scores[:, 0] - TIE_EPS))}


# ---------------------------------------------------------------- Qdrant Edge grid
@dataclass
class RecallRow:
    n: int
    distinct: int
    queries: int
    m: int
    ef_construct: int
    hnsw_ef: int | None
    full_scan_kb: int
    build_s: float
    recall_at_1: float
    recall_at_4: float
    p50_ms: float
    p99_ms: float
    indexed: int  # vectors in the HNSW graph (0: every search is a full scan)
    mode: str


def _uid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def _row_of(pid: str) -> int:
    return uuid.UUID(pid).int - 1


def build_edge(
    path: Path, db: np.ndarray, m: int, ef_construct: int, full_scan_kb: int, force: bool = True
) -> tuple[object, float]:
    """A Qdrant Edge shard holding ``db`` (ids uuid(i+1)), optimised; returns (index, seconds).

    force: indexing threshold FORCE_HNSW_KB (the graph is built whatever the size);
    otherwise Qdrant's default (small segments are then never indexed)."""
    from retrieval.edge_index import EdgeIndex

    shutil.rmtree(path, ignore_errors=True)
    idx = EdgeIndex(
        path,
        db.shape[1],
        hnsw_m=m,
        ef_construct=ef_construct,
        full_scan_threshold_kb=full_scan_kb,
        indexing_threshold_kb=FORCE_HNSW_KB if force else None,
    )
    t0 = time.perf_counter()
    qe = idx._qe
    for s in range(0, len(db), 5000):
        pts = [
            qe.Point(_uid(i), db[i].tolist(), {"caption": ""})
            for i in range(s, min(len(db), s + 5000))
        ]
        idx._shard.update(qe.UpdateOperation.upsert_points(pts))
    idx._shard.flush()
    idx.optimize()
    return idx, time.perf_counter() - t0


def measure(
    idx: object, db: np.ndarray, q: np.ndarray, truth_s: np.ndarray, k: int = 4
) -> tuple[float, float, float, float]:
    """Single-query (batch 1) search of every query: recall@1, recall@k, p50 ms, p99 ms."""
    search = idx.search  # type: ignore[attr-defined]
    search(q[:1], k)
    lat, got = [], []
    for i in range(len(q)):
        t0 = time.perf_counter()
        r = search(q[i : i + 1], k)
        lat.append((time.perf_counter() - t0) * 1e3)
        got.append([_row_of(nb.id) for nb in r[0]])
    r1 = tie_aware_recall(db, q, truth_s, got, 1)
    rk = tie_aware_recall(db, q, truth_s, got, k)
    a = np.asarray(lat)
    return r1, rk, float(np.percentile(a, 50)), float(np.percentile(a, 99))


def recall_grid(
    db: np.ndarray,
    q: np.ndarray,
    workdir: Path,
    *,
    builds: Sequence[tuple[int, int]] = ((16, 100), (32, 200)),
    efs: Sequence[int] = (16, 32, 64, 128, 256),
    shipped_threshold: bool = True,
    distinct: int | None = None,
) -> list[RecallRow]:
    """Every (m, ef_construct) build x every hnsw_ef, HNSW forced; plus, for the shipped
    build (first entry), the shipped full-scan threshold at hnsw_ef=128 and exact=True."""
    from retrieval.edge_index import EdgeIndex

    truth_s, _ = exact_topk(db, q, 4)
    n, nq = len(db), len(q)
    dist = distinct if distinct is not None else n
    rows: list[RecallRow] = []

    def measured(idx: Any, m: int, efc: int, hnsw_ef: int | None, full_scan_kb: int, build_s: float,
                 indexed: int, mode: str) -> RecallRow:
        """Search every query with the index's current params; one row of the table."""
        r1, r4, p50, p99 = measure(idx, db, q, truth_s)
        return RecallRow(n, dist, nq, m, efc, hnsw_ef, full_scan_kb, round(build_s, 2), round(r1, 4),
                         round(r4, 4), round(p50, 3), round(p99, 3), indexed, mode)

    for bi, (m, efc) in enumerate(builds):
        idx, build_s = build_edge(workdir / f"edge-{n}-{m}-{efc}", db, m, efc, FORCE_HNSW_KB)
        assert isinstance(idx, EdgeIndex)
        indexed = idx.info()["indexed_vectors"]
        try:
            for ef in efs:
                idx._params = idx._qe.SearchParams(hnsw_ef=ef)
                rows.append(measured(idx, m, efc, ef, FORCE_HNSW_KB, build_s, indexed, "hnsw"))
                log.info("recall %s", rows[-1])
            if bi == 0:
                idx._params = idx._qe.SearchParams(exact=True)
                rows.append(measured(idx, m, efc, None, FORCE_HNSW_KB, 0.0, 0, "exact=True"))
        finally:
            idx.close()
            shutil.rmtree(workdir / f"edge-{n}-{m}-{efc}", ignore_errors=True)
    if shipped_threshold and builds:
        m, efc = builds[0]
        idx, build_s = build_edge(
            workdir / f"edge-{n}-shipped", db, m, efc, SHIPPED_FULL_SCAN_KB, force=False
        )
        try:
            indexed = idx.info()["indexed_vectors"]  # type: ignore[attr-defined]
            idx._params = idx._qe.SearchParams(hnsw_ef=128)  # type: ignore[attr-defined]
            rows.append(measured(idx, m, efc, 128, SHIPPED_FULL_SCAN_KB, build_s, indexed,
                                 "as shipped (EdgeIndex defaults)"))
        finally:
            idx.close()  # type: ignore[attr-defined]
            shutil.rmtree(workdir / f"edge-{n}-shipped", ignore_errors=True)
    return rows


def format_table(rows: Sequence[RecallRow]) -> str:
    head = (
        "| N | distinct captions | queries | m | ef_construct | hnsw_ef | full_scan KB | "
        "build s | recall@1 | recall@4 | p50 ms | p99 ms | indexed | mode |"
    )
    out = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(
            f"| {r.n:,} | {r.distinct:,} | {r.queries} | {r.m} | {r.ef_construct} | "
            f"{'-' if r.hnsw_ef is None else r.hnsw_ef} | {r.full_scan_kb:,} | {r.build_s} | "
            f"{r.recall_at_1} | {r.recall_at_4} | {r.p50_ms} | {r.p99_ms} | {r.indexed:,} | {r.mode} |"
        )
    return "\n".join(out)


def run_recall(
    sizes: Sequence[int],
    queries: int,
    out: Path,
    *,
    model_dir: Path | None = None,
    builds: Sequence[tuple[int, int]] = ((16, 100), (32, 200)),
    efs: Sequence[int] = (16, 32, 64, 128, 256),
    cache: Path | None = Path("data/bench/recall-cache"),
    workdir: Path | None = None,
) -> list[RecallRow]:
    """Embed, then run the grid for every size; JSON written to ``out`` after each size."""
    import torch

    from engines.default_model import shipped_model_dir
    from engines.pipeline import OneStepPipeline

    pipe = OneStepPipeline.from_pretrained(model_dir or shipped_model_dir())
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ragturbo-recall-"))
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": str(model_dir or shipped_model_dir()),
        "database": "toyworld retrieval-split captions, pooled text embeddings (unit)",
        "queries": "toyworld eval-split prompts (held-out phrasings), batch-1 in-process search",
        "recall": f"tie-aware: a returned row counts when its exact cosine >= the exact k-th - {TIE_EPS}",
    }
    rows: list[RecallRow] = []
    q = cached_embed(pipe, query_prompts(queries), cache, "queries")
    try:
        for n in sizes:
            caps = db_captions(n)
            db = cached_embed(pipe, caps, cache, "db")
            truth_s, _ = exact_topk(db, q, 4)
            rows += recall_grid(db, q, work, builds=builds, efs=efs, distinct=len(set(caps)))
            out.parent.mkdir(parents=True, exist_ok=True)
            meta[f"ties_{n}"] = tie_stats(truth_s)  # type: ignore[assignment]
            out.write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return rows
