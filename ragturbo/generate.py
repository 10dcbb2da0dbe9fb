"""``ragturbo generate``: one image from a prompt, in this process or through a running server.

In-process (the default), retrieval goes through ``retrieval.compose`` on the embedded
database. That database (Qdrant Edge) admits one process at a time: when another
process holds it (usually ``ragturbo serve`` / ``make run``) the command does not
quietly generate without retrieval; it sends the request to the running server
(``--url``, default ``http://127.0.0.1:8000``) if one answers, and otherwise stops
with a message saying so. ``--url`` sends it there (``POST /generate``).

A server says which database it serves in ``/readyz`` (``database.id``: a hash of its
data directory's path, the model fingerprint and the pair count). Whenever the request
goes to a server for a database named here (``--db``, or the local database the server
was found holding), the command compares that id with the local path's and refuses a
server that serves another database, or does not say which.

The output format follows the file name: ``.png``, ``.jpg``/``.jpeg`` or ``.webp``.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import typer

from engines.modes import DEFAULT_MIN_SCORE, MAX_K
from retrieval.cli import db_path, qdrant_server

log = logging.getLogger(__name__)

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
DEFAULT_URL = "http://127.0.0.1:8000"


def image_format(out: Path) -> str:
    """File suffix -> png | jpeg | webp; anything else is a usage error."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise typer.BadParameter(
            f"-o {out}: the file name must end in {', '.join(FORMATS)} (got {out.suffix or 'no suffix'!r})"
        )
    return fmt


def database_in_use(db_path: Path) -> bool:
    """True when another process holds the embedded index under ``db_path``.

    Qdrant Edge takes an exclusive ``flock`` on ``<db>/edge/wal`` for as long as a
    process has the shard open; probing it (and releasing at once) is how we tell
    "locked" from "missing" or "broken" before loading anything.
    """
    wal = db_path / "edge" / "wal"
    if not wal.is_dir():
        return False
    fd = os.open(wal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def in_use_message(db_path: Path) -> str:
    return (
        f"the database at {db_path}/ is in use by another process, e.g. a running ragturbo serve"
    )


def server_alive(url: str, timeout_s: float = 1.0) -> bool:
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def server_database(url: str, api_key: str | None = None, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The ``database`` object of the server's ``/readyz`` (None when it names none)."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url.rstrip("/") + "/readyz", headers=headers, timeout=timeout_s)
        body = r.json()
    except (httpx.HTTPError, ValueError):
        return None
    db = body.get("database") if isinstance(body, dict) else None
    return db if isinstance(db, dict) else None


def database_mismatch(url: str, db_path: Path, api_key: str | None = None) -> str | None:
    """None when the server at ``url`` serves the database at ``db_path``; else a message."""
    from retrieval.types import database_id

    want = database_id(db_path)
    info = server_database(url, api_key)
    if info is None:
        return (f"the server at {url} does not say which database it serves (no database in "
                f"its /readyz), so it cannot be checked against {db_path}/")
    if info.get("id") != want:
        return (f"the server at {url} serves another database (id {info.get('id')}, "
                f"{info.get('pairs')} pairs, model {info.get('model_fingerprint')}), not "
                f"{db_path}/ (id {want})")
    return None


def generate_remote(
    url: str,
    prompt: str,
    *,
    seed: int,
    mode: str,
    k: int,
    fmt: str,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """``POST {url}/generate`` for one image; returns the response JSON (raises on an error)."""
    body = {"prompt": prompt, "seed": seed, "retrieval": {"mode": mode, "k": k}, "format": fmt}
    return post_api(url, "/generate", body, api_key, timeout_s)


def post_api(url: str, path: str, body: dict[str, Any], api_key: str | None,
             timeout_s: float) -> dict[str, Any]:
    """``POST {url}{path}`` with a JSON body; the response JSON, or RuntimeError with the
    server's error message (the service's envelope) or why it could not be reached."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(url.rstrip("/") + path, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise RuntimeError(f"cannot reach the server at {url}: {e}") from e
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        raise RuntimeError(f"{url}{path} answered {r.status_code}: {msg}")
    return dict(r.json())


def generate(
    prompt: str = typer.Argument(..., help="The text prompt."),
    out: Path = typer.Option(
        Path("out.png"), "-o", "--out", help="Output file; .png, .jpg/.jpeg or .webp picks the format."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Noise seed."),
    mode: str = typer.Option("adapter", "--mode", help="Retrieval mode: adapter, inject or off."),
    k: int = typer.Option(1, "--k", min=1, max=MAX_K, help="Neighbours to retrieve."),
    url: str | None = typer.Option(
        None,
        "--url",
        envvar="RAGTURBO_URL",
        help="Send the request to a running server (POST URL/generate) instead of loading "
        "the model here. Without it, a server at http://127.0.0.1:8000 is used automatically "
        "when it holds the embedded database.",
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="RAGTURBO_API_KEY", help="API key for --url (Bearer)."
    ),
    db: Path | None = typer.Option(
        None, "--db", help="Data directory (default RAGTURBO_DB_PATH or ./data). A server the "
        "request goes to must serve this database (its /readyz database id), or the command stops."
    ),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (default: embedded Qdrant Edge)."
    ),
    min_score: float = typer.Option(
        DEFAULT_MIN_SCORE, "--min-score", min=-1.0, max=1.0,
        help="λ=0 for neighbours below this cosine (all below: retrieval weak).",
    ),
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        help="Model directory (default: RAGTURBO_MODEL_DIR or the shipped model).",
    ),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0."),
) -> None:
    """Write one image for PROMPT at the model's native size (in-process, or via --url)."""
    from engines.modes import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not prompt.strip():
        raise typer.BadParameter("PROMPT must not be empty")
    fmt = image_format(out)
    dbp, (qurl, _) = db_path(db), qdrant_server(qdrant_url)

    check_db = db is not None
    if url is None and qurl is None and mode != "off" and database_in_use(dbp):
        if server_alive(DEFAULT_URL):
            bad = database_mismatch(DEFAULT_URL, dbp, api_key)
            if bad is not None:
                typer.echo(
                    f"error: {in_use_message(dbp)}, but {bad}. Pass --url of the server that "
                    f"holds {dbp}/, stop that process, or use --mode off (no retrieval).",
                    err=True,
                )
                raise typer.Exit(1)
            typer.echo(f"{in_use_message(dbp)}; sending the request to {DEFAULT_URL}, which "
                       "serves it", err=True)
            url = DEFAULT_URL
            check_db = False
        else:
            typer.echo(
                f"error: {in_use_message(dbp)}. Stop it, pass --url of the running server, "
                "or use --mode off (no retrieval).",
                err=True,
            )
            raise typer.Exit(1)
    if url is not None and check_db and mode != "off":
        bad = database_mismatch(url, dbp, api_key)
        if bad is not None:
            typer.echo(f"error: {bad}. Point --db at the directory that server serves, or "
                       "drop --db to use whatever it serves.", err=True)
            raise typer.Exit(1)
    if url is not None:
        _remote(url, prompt, out, seed=seed, mode=mode, k=k, fmt=fmt, api_key=api_key)
        return
    _local(prompt, out, fmt, seed, mode, k, dbp, qurl, min_score, model_dir, device)


def _remote(url: str, prompt: str, out: Path, *, seed: int, mode: str, k: int, fmt: str,
            api_key: str | None) -> None:
    try:
        res = generate_remote(url, prompt, seed=seed, mode=mode, k=k, fmt=fmt, api_key=api_key)
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(res["images"][0]["b64"]))
    typer.echo(f"wrote {out} (seed {seed}, retrieval {res['retrieval_status']}, via {url})")
    _report([(n["score"], bool(n.get("used")), n["id"], n["caption"]) for n in res.get("retrieved", [])],
            res.get("unknown_words"))


def _report(neighbours: list[tuple[float, bool, str, str]], unknown: list[str] | None) -> None:
    """The neighbours (used or below min_score) and the prompt's unknown words."""
    for score, used, pid, cap in neighbours:
        typer.echo(f"  {score:7.4f}  {'used' if used else 'weak'}  {pid}  {cap}")
    if unknown is not None:
        typer.echo(f"  unknown words: {', '.join(unknown) if unknown else 'none'}")


def _local(prompt: str, out: Path, fmt: str, seed: int, mode: str, k: int, dbp: Path,
           qurl: str | None, min_score: float, model_dir: Path | None, device: str) -> None:
    from engines.default_model import resolve_model_dir
    from retrieval.compose import ImageRequest, build_text_to_image
    from service.encode import encode_image

    mdir = resolve_model_dir(model_dir, dbp)
    t2i = build_text_to_image(
        mdir,
        device=device,
        db_path=dbp,
        qdrant_url=qurl,
        qdrant_api_key=qdrant_server(qurl)[1],
        min_score=min_score,
    )
    try:
        (res,), _ = t2i.generate([ImageRequest(prompt=prompt, seed=seed, mode=mode, k=k)])  # type: ignore[arg-type]
    finally:
        t2i.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_image(res.image, fmt))
    h, w = res.image.shape[:2]
    typer.echo(f"wrote {out} ({w}x{h} {fmt}, seed {seed}, retrieval {res.retrieval_status})")
    _report([(n.score, n.used, n.id, n.caption) for n in res.retrieved], res.unknown_words)
