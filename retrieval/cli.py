"""CLI commands of the retrieval package: ``ingest``, ``search``, ``bench retrieval``."""

from __future__ import annotations

from pathlib import Path

import typer

from engines.default_model import resolve_model_dir
from engines.modes import MAX_K


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("ingest")(ingest_cmd)
    app.command("search")(search_cmd)
    bench.command("retrieval")(bench_retrieval_cmd)
    bench.command("recall")(bench_recall_cmd)
    bench.command("fp8")(bench_fp8_cmd)


def bench_fp8_cmd(
    pairs: int = typer.Option(1024, "--pairs", min=8, help="Real toy pairs (rendered + encoded)."),
    prompts: int = typer.Option(128, "--prompts", min=1, help="Eval prompts generated per variant."),
    k: int = typer.Option(2, "--k", min=1, max=MAX_K, help="Neighbours retrieved per prompt."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Default: the shipped toy model."),
    out: Path = typer.Option(Path("data/bench/fp8.json"), "--out", help="JSON output."),
) -> None:
    """Float8 vs float16 H-features of the device index: round-trip error, images, memory."""
    import json

    from retrieval.feature_precision import run_fp8

    res = run_fp8(n=pairs, prompts=prompts, k=k, model_dir=str(model_dir) if model_dir else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    typer.echo(json.dumps(res, indent=2))
    typer.echo(f"wrote {out}")


def bench_recall_cmd(
    sizes: str = typer.Option("10000,100000", "--sizes", help="Comma-separated database sizes."),
    queries: int = typer.Option(500, "--queries", min=10, help="Eval prompts used as queries."),
    builds: str = typer.Option(
        "16:100,32:200", "--builds", help="Comma-separated HNSW builds m:ef_construct."
    ),
    hnsw_ef: str = typer.Option("16,32,64,128,256", "--hnsw-ef", help="Search beams to measure."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Default: the shipped toy model."),
    out: Path = typer.Option(Path("data/bench/recall.json"), "--out", help="JSON output."),
    cache: Path = typer.Option(
        Path("data/bench/recall-cache"), "--cache", help="Embedding cache (.npy)."
    ),
) -> None:
    """Qdrant Edge recall@1/@4 and latency vs exact cosine on real caption embeddings."""
    from retrieval.recall import format_table, run_recall

    try:
        ns = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
        bl = [tuple(int(x) for x in b.split(":")) for b in builds.split(",") if b.strip()]
        efs = [int(e) for e in hnsw_ef.split(",") if e.strip()]
    except ValueError:
        raise typer.BadParameter("--sizes, --builds (m:ef_construct), --hnsw-ef: integers") from None
    if any(len(b) != 2 for b in bl):
        raise typer.BadParameter(f"--builds must be m:ef_construct pairs, got {builds!r}")
    rows = run_recall(
        ns, queries, out, model_dir=model_dir, builds=bl, efs=efs, cache=cache  # type: ignore[arg-type]
    )
    typer.echo(format_table(rows))
    typer.echo(f"wrote {out}")


def bench_retrieval_cmd(
    sizes: str = typer.Option(
        "10000,100000,630000", "--sizes", help="Comma-separated database sizes."
    ),
    queries: int = typer.Option(500, "--queries", min=10, help="Queries per size."),
    dim: int = typer.Option(1024, "--dim", min=2, help="Vector width of the synthetic pairs."),
    out: Path = typer.Option(Path("data/bench/retrieval.json"), "--out", help="JSON output."),
    hnsw_m: int = typer.Option(16, "--hnsw-m", help="HNSW graph degree (Qdrant m)."),
    ef_construct: int = typer.Option(100, "--ef-construct", help="HNSW build beam width (Qdrant ef_construct)."),
    hnsw_ef: str = typer.Option(
        "64,128,512", "--hnsw-ef", help="Comma-separated search beams to measure."
    ),
    local_max: int = typer.Option(
        100_000, "--local-max", help="Largest size for qdrant-client local mode."
    ),
    hnsw_max: int | None = typer.Option(
        None, "--hnsw-max", help="Above this size, skip the HNSW build (exact scan only)."
    ),
    queries_exact: int = typer.Option(
        100, "--queries-exact", min=1, help="Queries for the exact/local rows."
    ),
) -> None:
    """Query latency p50/p99 and recall@1 vs exact search on random unit vectors."""
    from retrieval.bench import format_table, run_bench

    try:
        ns = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--sizes must be comma-separated integers, got {sizes!r}"
        ) from None
    efs = [int(e) for e in hnsw_ef.split(",") if e.strip()]
    rows = run_bench(
        ns,
        queries,
        out,
        dim=dim,
        hnsw_m=hnsw_m,
        ef_construct=ef_construct,
        hnsw_ef=efs,
        local_max=local_max,
        hnsw_max=hnsw_max,
        local_queries=max(1, queries_exact // 2),
    )
    typer.echo(format_table(rows))
    typer.echo(f"wrote {out}")


def _db_path(db: Path | None) -> Path:
    import os

    return db or Path(os.environ.get("RAGTURBO_DB_PATH", "data"))


def _qdrant(url: str | None) -> tuple[str | None, str | None]:
    import os

    return url or os.environ.get("RAGTURBO_QDRANT_URL") or None, os.environ.get(
        "RAGTURBO_QDRANT_API_KEY"
    ) or None


def ingest_cmd(
    images: Path | None = typer.Option(
        None, "--images", help="Directory the 'file' column is relative to."
    ),
    captions: Path | None = typer.Option(
        None, "--captions", help="jsonl, csv or parquet with 'file' and 'caption'."
    ),
    db: Path | None = typer.Option(
        None, "--db", help="Data directory (default RAGTURBO_DB_PATH or ./data)."
    ),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (default: embedded Qdrant Edge)."
    ),
    batch: int = typer.Option(32, "--batch", min=1, help="Pairs per encoder batch."),
    commit_every: int = typer.Option(
        256, "--commit-every", min=1, help="Pairs per durable commit."
    ),
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        help="Model directory (default: RAGTURBO_MODEL_DIR or the shipped model).",
    ),
    device: str = typer.Option("cpu", "--device", help="torch device of the encoders, e.g. cpu or cuda:0."),
    rejects: Path | None = typer.Option(
        None, "--rejects", help="Rejected rows, jsonl (default <db>/ingest-rejects.jsonl)."
    ),
    rebuild_features: bool = typer.Option(
        False,
        "--rebuild-features",
        help="Recompute stored H-features and embeddings for the current model.",
    ),
    allow_outside_images: bool = typer.Option(
        False,
        "--allow-outside-images",
        help="Read 'file' paths that resolve outside --images (absolute, '..', symlinks).",
    ),
) -> None:
    """Add text-image pairs to the retrieval database (idempotent, resumable)."""
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest, read_captions
    from retrieval.ingest import rebuild_features as rebuild
    from retrieval.types import RetrievalError

    dbp = _db_path(db)
    url, key = _qdrant(qdrant_url)
    cfg = DbConfig(db_path=dbp, qdrant_url=url, qdrant_api_key=key)
    pipe = OneStepPipeline.from_pretrained(resolve_model_dir(model_dir, dbp), device=device)
    if rebuild_features:
        n = rebuild(pipe, cfg, batch=batch)
        typer.echo(f"rebuilt features of {n} pairs for model {pipe.fingerprint}")
        if images is None:
            return
    if images is None or captions is None:
        raise typer.BadParameter(
            "--images and --captions are required (unless --rebuild-features alone)"
        )
    if not images.is_dir():
        raise typer.BadParameter(f"--images {images} is not a directory")
    try:
        rows = read_captions(captions)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    try:
        database = open_db_for_pipeline(cfg, pipe, create=True)
    except RetrievalError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    rej = rejects or dbp / "ingest-rejects.jsonl"
    try:
        rep = ingest(
            pipe,
            database,
            images,
            rows,
            batch=batch,
            commit_every=commit_every,
            rejects_path=rej,
            allow_outside=allow_outside_images,
        )
    except RetrievalError as e:  # e.g. the shard is held by a running server
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    finally:
        database.close()
    typer.echo(rep.summary())
    for r in rep.rejects[:20]:
        typer.echo(f"  rejected row {r.row} ({r.file!r}): {r.reason}")
    if len(rep.rejects) > 20:
        typer.echo(f"  ... {len(rep.rejects) - 20} more")
    if rep.rejects:
        typer.echo(f"rejects written to {rej}")


def search_cmd(
    query: str = typer.Argument(..., help="Text to search for."),
    k: int = typer.Option(5, "--k", min=1, max=100, help="Number of neighbours."),
    db: Path | None = typer.Option(
        None, "--db", help="Data directory (default RAGTURBO_DB_PATH or ./data)."
    ),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (default: embedded Qdrant Edge)."
    ),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Model directory whose text encoder embeds the query "
        "(default: RAGTURBO_MODEL_DIR or the shipped model); only it and the tokenizer are loaded."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"id","caption","score"}].'),
) -> None:
    """Nearest captions to QUERY with cosine scores."""
    import json

    from retrieval.db import DbConfig, open_db
    from retrieval.query import QueryEncoder
    from retrieval.types import RetrievalError

    if not query.strip():
        raise typer.BadParameter("QUERY must not be empty")
    dbp = _db_path(db)
    url, key = _qdrant(qdrant_url)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar before the answer
    enc = QueryEncoder(resolve_model_dir(model_dir, dbp))
    try:
        database = open_db(
            DbConfig(db_path=dbp, qdrant_url=url, qdrant_api_key=key), fingerprint=enc.fingerprint,
            embed_dim=enc.embed_dim, h_shape=enc.h_shape, latent_shape=enc.latent_shape,
        )
        res = database.search(enc.pooled([query]), k)[0]
        database.close()
    except RetrievalError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(
            json.dumps(
                [{"id": n.id, "caption": n.caption, "score": round(n.score, 6)} for n in res]
            )
        )
        return
    if not res:
        typer.echo("no results (empty database?)")
    for n in res:
        typer.echo(f"{n.score:7.4f}  {n.id}  {n.caption}")
