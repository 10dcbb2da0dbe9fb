"""``ragturbo search``: the nearest captions to a query, here or through a running server.

Locally the command loads only the text encoder and tokenizer (``retrieval.cli``). The
embedded database (Qdrant Edge) admits one process: while a server holds it, or with
``--url``, the query goes to that server (``POST /search``) and this process imports
neither torch nor transformers. A server is checked as ``ragturbo generate`` checks it
(its ``/readyz`` ``database.id`` against the local path).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

import ragturbo.generate as gen
from retrieval.cli import db_path, qdrant_server

LOCAL_MAX_K = 100


def search_remote(url: str, query: str, k: int, api_key: str | None = None,
                  timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """``POST {url}/search``; the results (raises RuntimeError with the server's message)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no request line before the answer
    return list(gen.post_api(url, "/search", {"query": query, "k": k}, api_key, timeout_s)["results"])


def _server_for(url: str | None, db: Path | None, dbp: Path, qurl: str | None,
                api_key: str | None) -> str | None:
    """The server to ask (None: search here); exits with a message on a wrong server."""
    check_db = db is not None
    if url is None and qurl is None and gen.database_in_use(dbp):
        default = gen.DEFAULT_URL
        if not gen.server_alive(default):
            typer.echo(f"error: {gen.in_use_message(dbp)}. Stop it, or pass --url of the running "
                       "server.", err=True)
            raise typer.Exit(1)
        bad = gen.database_mismatch(default, dbp, api_key)
        if bad is not None:
            typer.echo(f"error: {gen.in_use_message(dbp)}, but {bad}. Pass --url of the server "
                       f"that holds {dbp}/, or stop that process.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{gen.in_use_message(dbp)}; asking {default}, which serves it", err=True)
        return default
    if url is not None and check_db:
        bad = gen.database_mismatch(url, dbp, api_key)
        if bad is not None:
            typer.echo(f"error: {bad}. Point --db at the directory that server serves, or "
                       "drop --db to search whatever it serves.", err=True)
            raise typer.Exit(1)
    return url


def search(
    query: str = typer.Argument(..., help="Text to search for."),
    k: int = typer.Option(5, "--k", min=1, max=LOCAL_MAX_K,
                          help="Number of neighbours (a server allows at most its MAX_K, 8)."),
    db: Path | None = typer.Option(
        None, "--db", help="Data directory (default RAGTURBO_DB_PATH or ./data). A server the "
        "query goes to must serve this database (its /readyz database id), or the command stops."
    ),
    url: str | None = typer.Option(
        None, "--url", envvar="RAGTURBO_URL",
        help="Ask a running server (POST URL/search) instead of loading the text encoder here. "
        f"Without it, a server at {gen.DEFAULT_URL} is asked when it holds the embedded database.",
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="RAGTURBO_API_KEY", help="API key for the server (Bearer)."
    ),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (default: embedded Qdrant Edge)."
    ),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Model directory whose text encoder embeds the query "
        "(default: RAGTURBO_MODEL_DIR or the shipped model); only it and the tokenizer are loaded."),
    as_json: bool = typer.Option(False, "--json", help='Print [{"id","caption","score"}].'),
) -> None:
    """Nearest captions to QUERY with cosine scores (here, or from a running server)."""
    if not query.strip():
        raise typer.BadParameter("QUERY must not be empty")
    dbp, (qurl, _) = db_path(db), qdrant_server(qdrant_url)
    server = _server_for(url, db, dbp, qurl, api_key)
    if server is not None:
        try:
            hits = search_remote(server, query, k, api_key)
        except RuntimeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from e
    else:
        from retrieval.cli import search_local

        hits = search_local(query, k, dbp, qurl, model_dir)
    print_hits(hits, as_json)


def print_hits(hits: list[dict[str, Any]], as_json: bool) -> None:
    """The same lines for either path: ``score  id  caption``, or the JSON list."""
    if as_json:
        typer.echo(json.dumps([{"id": h["id"], "caption": h["caption"],
                                "score": round(float(h["score"]), 6)} for h in hits]))
        return
    if not hits:
        typer.echo("no results (empty database?)")
    for h in hits:
        typer.echo(f"{float(h['score']):7.4f}  {h['id']}  {h['caption']}")
