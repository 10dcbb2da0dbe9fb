"""Retrieval benchmark: query latency p50/p99 and recall@1 against exact search.

Random unit vectors (width 1024 by default, the sd-turbo pooled-embedding width) as
both database and queries; ground truth is exact cosine top-1 (numpy). Backends:
Qdrant Edge with HNSW (the embedded default) and, up to ``local_max`` points,
qdrant-client local mode (pure-Python brute force, so recall is 1 by construction and
latency grows linearly). Build time is split into upload (WAL + flush) and index
build (``optimize``: HNSW graph).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    backend: str
    size: int
    dim: int
    queries: int
    upload_s: float
    index_build_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    recall_at_1: float
    params: str


def unit_vectors(rng: np.random.Generator, n: int, dim: int, chunk: int = 50_000) -> np.ndarray:
    """(n,dim) float32 rows of unit norm (Gaussian directions: uniform on the sphere)."""
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top1(db: np.ndarray, q: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Index of the max inner product row of ``db`` for each query (B,)."""
    best = np.full(len(q), -np.inf, dtype=np.float32)
    arg = np.zeros(len(q), dtype=np.int64)
    for s in range(0, len(db), chunk):
        sc = q @ db[s : s + chunk].T
        a = sc.argmax(1)
        v = sc[np.arange(len(q)), a]
        upd = v > best
        best[upd], arg[upd] = v[upd], a[upd] + s
    return arg


def _ids(n0: int, n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n0, n0 + n)]


def _measure(index: object, q: np.ndarray, truth: np.ndarray) -> tuple[list[float], float]:
    lat, hits = [], 0
    search = index.search  # type: ignore[attr-defined]
    search(q[:1], 1)  # warm
    for i in range(len(q)):
        t0 = time.perf_counter()
        r = search(q[i : i + 1], 1)
        lat.append((time.perf_counter() - t0) * 1e3)
        hits += int(r[0] and uuid.UUID(r[0][0].id).int - 1 == truth[i])
    return lat, hits / len(q)


def bench_size(
    size: int,
    queries: int,
    dim: int,
    workdir: Path,
    *,
    seed: int = 0,
    hnsw_m: int = 16,
    ef_construct: int = 100,
    hnsw_ef: int | list[int] = 128,
    local_max: int = 100_000,
    local_queries: int = 50,
    hnsw_max: int | None = None,
) -> list[BenchRow]:
    from retrieval.edge_index import EdgeIndex

    rng = np.random.default_rng(seed)
    db = unit_vectors(rng, size, dim)
    q = unit_vectors(rng, queries, dim)
    truth = exact_top1(db, q)
    rows: list[BenchRow] = []
    path = workdir / f"edge-{size}"
    shutil.rmtree(path, ignore_errors=True)
    idx = EdgeIndex(path, dim, hnsw_m=hnsw_m, ef_construct=ef_construct)
    t0 = time.perf_counter()
    step = 2000
    for s in range(0, size, step):
        n = min(step, size - s)
        idx._shard.update(  # bulk path: one flush at the end, not per batch
            idx._qe.UpdateOperation.upsert_points(
                [
                    idx._qe.Point(i, v.tolist(), {"caption": ""})
                    for i, v in zip(_ids(s, n), db[s : s + n])
                ]
            )
        )
    idx._shard.flush()
    upload = time.perf_counter() - t0
    build = 0.0
    efs = [hnsw_ef] if isinstance(hnsw_ef, int) else list(hnsw_ef)
    if hnsw_max is not None and size > hnsw_max:
        efs = []  # HNSW build too slow here: measure exact full scan only
    else:
        t0 = time.perf_counter()
        idx.optimize()
        build = time.perf_counter() - t0
    log.info("edge %d: upload %.1fs, optimize %.1fs, %s", size, upload, build, idx.info())
    for ef in efs:
        idx._params = idx._qe.SearchParams(hnsw_ef=ef)
        lat, rec = _measure(idx, q, truth)
        rows.append(
            _row(
                "qdrant-edge hnsw",
                size,
                dim,
                lat,
                rec,
                upload,
                build,
                f"m={hnsw_m} ef_construct={ef_construct} hnsw_ef={ef}",
            )
        )
    idx._params = idx._qe.SearchParams(exact=True)
    nq = min(local_queries * 2, queries)
    lat, rec = _measure(idx, q[:nq], truth[:nq])
    rows.append(
        _row("qdrant-edge exact (full scan)", size, dim, lat, rec, upload, 0.0, "exact=True")
    )
    idx.close()
    shutil.rmtree(path, ignore_errors=True)
    if size <= local_max:
        from retrieval.server_index import QdrantServerIndex

        cli = QdrantServerIndex(dim, location=":memory:")
        t0 = time.perf_counter()
        for s in range(0, size, step):
            n = min(step, size - s)
            cli.upsert(_ids(s, n), db[s : s + n], [{"caption": ""}] * n)
        upload = time.perf_counter() - t0
        nq = min(local_queries, queries)
        lat, rec = _measure(cli, q[:nq], truth[:nq])
        rows.append(
            _row("qdrant-client local (brute force)", size, dim, lat, rec, upload, 0.0, "exact")
        )
        cli.close()
    return rows


def _row(
    backend: str,
    size: int,
    dim: int,
    lat: list[float],
    rec: float,
    up: float,
    build: float,
    params: str,
) -> BenchRow:
    a = np.asarray(lat)
    return BenchRow(
        backend,
        size,
        dim,
        len(a),
        round(up, 2),
        round(build, 2),
        round(float(np.percentile(a, 50)), 3),
        round(float(np.percentile(a, 99)), 3),
        round(float(a.mean()), 3),
        round(rec, 4),
        params,
    )


def format_table(rows: list[BenchRow]) -> str:
    head = "| backend | points | queries | upload s | index build s | p50 ms | p99 ms | recall@1 | params |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.size:,} | {r.queries} | {r.upload_s} | {r.index_build_s} | "
            f"{r.p50_ms} | {r.p99_ms} | {r.recall_at_1} | {r.params} |"
        )
    return "\n".join(lines)


def run_bench(
    sizes: list[int],
    queries: int,
    out: Path,
    dim: int = 1024,
    workdir: Path | None = None,
    **kw: object,
) -> list[BenchRow]:
    """Run every size, appending rows to ``out`` (JSON) after each so a long run keeps its results."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ragturbo-bench-"))
    rows: list[BenchRow] = []
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d"),
        "dim": dim,
        "query": "random unit vectors; single-query latency (batch 1), in-process",
    }
    try:
        for n in sizes:
            rows += bench_size(n, queries, dim, work, **kw)  # type: ignore[arg-type]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return rows
