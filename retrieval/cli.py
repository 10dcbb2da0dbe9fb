"""CLI commands of the retrieval package: ``ingest``, and the local half of ``ragturbo search``
(``search_local``; the command itself, which may ask a running server, is ``ragturbo.search``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from engines.default_model import resolve_model_dir


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("ingest")(ingest_cmd)


def db_path(db: Path | None) -> Path:
    """The data directory of a command: ``--db``, else RAGTURBO_DB_PATH, else ./data."""
    return db or Path(os.environ.get("RAGTURBO_DB_PATH", "data"))


def qdrant_server(url: str | None) -> tuple[str | None, str | None]:
    """(Qdrant server URL: ``--qdrant-url`` or RAGTURBO_QDRANT_URL, or None for the embedded
    index; its API key from RAGTURBO_QDRANT_API_KEY, or None)."""
    return url or os.environ.get("RAGTURBO_QDRANT_URL") or None, os.environ.get("RAGTURBO_QDRANT_API_KEY") or None


@contextmanager
def _exit_2_on_retrieval_error() -> Iterator[None]:
    """A database error (a shard held by a running server, a server that is down) exits 2 with its message."""
    from retrieval.types import RetrievalError

    try:
        yield
    except RetrievalError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def ingest_cmd(
    images: Path | None = typer.Option(None, "--images", help="Directory the 'file' column is relative to."),
    captions: Path | None = typer.Option(None, "--captions", help="jsonl, csv or parquet with 'file' and 'caption'."),
    db: Path | None = typer.Option(None, "--db", help="Data directory (default RAGTURBO_DB_PATH or ./data)."),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (default: embedded Qdrant Edge)."
    ),
    batch: int = typer.Option(32, "--batch", min=1, help="Pairs per encoder batch."),
    commit_every: int = typer.Option(256, "--commit-every", min=1, help="Pairs per durable commit."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Model directory (default: RAGTURBO_MODEL_DIR or the shipped model)."
    ),
    device: str = typer.Option("cpu", "--device", help="torch device of the encoders, e.g. cpu or cuda:0."),
    rejects: Path | None = typer.Option(
        None, "--rejects", help="Rejected rows, jsonl (default <db>/ingest-rejects.jsonl)."
    ),
    rebuild_features: bool = typer.Option(
        False, "--rebuild-features", help="Recompute stored H-features and embeddings for the current model."
    ),
    allow_outside_images: bool = typer.Option(
        False, "--allow-outside-images",
        help="Read 'file' paths that resolve outside --images (absolute, '..', symlinks).",
    ),
) -> None:
    """Add text-image pairs to the retrieval database (idempotent, resumable)."""
    from engines.pipeline import OneStepPipeline
    from retrieval.db import DbConfig
    from retrieval.ingest import rebuild_features as rebuild

    dbp = db_path(db)
    url, key = qdrant_server(qdrant_url)
    # reconnect=False: an index held by another process (or a server that is down) is
    # refused when it is opened, before any image is encoded.
    cfg = DbConfig(db_path=dbp, qdrant_url=url, qdrant_api_key=key, reconnect=False)
    pipe = OneStepPipeline.from_pretrained(resolve_model_dir(model_dir, dbp), device=device)
    if rebuild_features:
        with _exit_2_on_retrieval_error():
            n = rebuild(pipe, cfg, batch=batch)
        typer.echo(f"rebuilt features of {n} pairs for model {pipe.fingerprint}")
        if images is None:
            return
    if images is None or captions is None:
        raise typer.BadParameter("--images and --captions are required (unless --rebuild-features alone)")
    rej = rejects or dbp / "ingest-rejects.jsonl"
    _ingest_folder(pipe, cfg, images, captions, rej, batch=batch, commit_every=commit_every,
                   allow_outside=allow_outside_images)


def _ingest_folder(pipe: Any, cfg: Any, images: Path, captions: Path, rej: Path, **kw: Any) -> None:
    """Check the inputs, ingest the pairs of ``captions`` and print the report and the first rejects."""
    from retrieval.db import open_db_for_pipeline
    from retrieval.ingest import ingest, read_captions

    if not images.is_dir():
        raise typer.BadParameter(f"--images {images} is not a directory")
    try:
        rows = read_captions(captions)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    with _exit_2_on_retrieval_error():
        database = open_db_for_pipeline(cfg, pipe, create=True)
    with _exit_2_on_retrieval_error():
        try:
            rep = ingest(pipe, database, images, rows, rejects_path=rej, **kw)
        finally:
            database.close()
    typer.echo(rep.summary())
    for r in rep.rejects[:20]:
        typer.echo(f"  rejected line {r.line} ({r.file!r}): {r.reason}")
    if len(rep.rejects) > 20:
        typer.echo(f"  ... {len(rep.rejects) - 20} more")
    if rep.rejects:
        typer.echo(f"rejects written to {rej}")


def search_local(
    query: str, k: int, dbp: Path, qdrant_url: str | None, model_dir: Path | None
) -> list[dict[str, object]]:
    """``ragturbo search`` in this process: the text encoder, tokenizer and the database;
    [{"id", "caption", "score"}] nearest first (a database error exits 2)."""
    from retrieval.db import DbConfig, open_db
    from retrieval.query import QueryEncoder

    url, key = qdrant_server(qdrant_url)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar before the answer
    enc = QueryEncoder(resolve_model_dir(model_dir, dbp))
    with _exit_2_on_retrieval_error():
        database = open_db(
            DbConfig(db_path=dbp, qdrant_url=url, qdrant_api_key=key), fingerprint=enc.fingerprint,
            embed_dim=enc.embed_dim, h_shape=enc.h_shape, latent_shape=enc.latent_shape,
        )
        res = database.search(enc.pooled([query]), k)[0]
        database.close()
    return [{"id": n.id, "caption": n.caption, "score": n.score} for n in res]
