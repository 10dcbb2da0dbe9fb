"""``ragturbo generate`` as a user meets it: formats by file name, a database held by a
running server (plain message, or the request goes to that server), and ``--url``."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import typer
from conftest import make_pairs, write_jsonl
from PIL import Image
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from ragturbo.generate import generate
    from ragturbo.search import search
    from retrieval.cli import register

    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    app.command("generate")(generate)
    register(app, bench)
    app.command("search")(search)
    return app


@pytest.fixture(scope="module")
def db(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gen")
    rows = make_pairs(tmp / "imgs", 4)
    caps = write_jsonl(tmp / "caps.jsonl", rows)
    d = tmp / "db"
    args = ["ingest", "--images", str(tmp / "imgs"), "--captions", str(caps), "--db", str(d)]
    r = CliRunner().invoke(_app(), [*args, "--model-dir", str(model_dir)])
    assert r.exit_code == 0, r.output
    return d


class _Stub(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []
    serves: ClassVar[dict[str, Any] | None] = None  # /readyz "database"

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._send(200, json.dumps({"status": "ready", "database": _Stub.serves}).encode())
            return
        self._send(200 if self.path == "/healthz" else 404, b'{"status":"ok"}')

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        req["_auth"] = self.headers.get("authorization")
        _Stub.seen.append(req)
        if self.path == "/search":
            hits = [{"id": "p1", "caption": "a red circle", "score": 0.9}][: req["k"]]
            self._send(200, json.dumps({"results": hits, "database": _Stub.serves}).encode())
            return
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format=req["format"].upper())
        body = {
            "images": [{"b64": base64.b64encode(buf.getvalue()).decode(), "seed": req["seed"],
                        "format": req["format"]}],
            "retrieved": [{"id": "p1", "caption": "a red circle", "score": 0.9, "weight": 0.9, "used": True}],
            "retrieval_status": "ok",
            "unknown_words": ["ring"],
        }
        self._send(200, json.dumps(body).encode())


@pytest.fixture()
def stub() -> Iterator[str]:
    _Stub.seen.clear()
    _Stub.serves = None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(("name", "fmt"), [("x.jpg", "JPEG"), ("x.webp", "WEBP"), ("x.png", "PNG")])
def test_output_format_follows_the_file_name(model_dir: Path, db: Path, tmp_path: Path,
                                             name: str, fmt: str) -> None:
    out = tmp_path / name
    args = ["generate", "a red circle", "-o", str(out), "--db", str(db), "--model-dir", str(model_dir)]
    r = CliRunner().invoke(_app(), [*args, "--min-score", "0"])
    assert r.exit_code == 0, r.output
    assert "retrieval ok" in r.output and " used " in r.output
    assert Image.open(out).format == fmt


def test_a_neighbour_below_min_score_is_reported_weak(model_dir: Path, db: Path, tmp_path: Path) -> None:
    args = ["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--db", str(db), "--model-dir", str(model_dir)]
    r = CliRunner().invoke(_app(), [*args, "--min-score", "0.9999"])
    assert r.exit_code == 0, r.output
    assert "retrieval weak" in r.output and " weak " in r.output and " used " not in r.output


def test_unknown_suffix_is_a_usage_error(model_dir: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(_app(), ["generate", "x", "-o", str(tmp_path / "x.gif"), "--model-dir", str(model_dir)])
    assert r.exit_code == 2 and ".jpg" in r.output


def test_database_in_use_says_so_plainly(model_dir: Path, db: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, pipe: Any) -> None:
    import ragturbo.generate as g
    from retrieval.db import DbConfig, open_db_for_pipeline

    monkeypatch.setattr(g, "DEFAULT_URL", "http://127.0.0.1:9")  # nothing listens there
    assert not g.database_in_use(db)
    held = open_db_for_pipeline(DbConfig(db_path=db), pipe)  # what a running `serve` does
    try:
        assert g.database_in_use(db)
        r = CliRunner().invoke(
            _app(), ["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--db", str(db),
                     "--model-dir", str(model_dir)]
        )
        assert r.exit_code == 1
        assert f"the database at {db}/ is in use by another process, e.g. a running ragturbo serve" in r.output
        assert "WouldBlock" not in r.output and not (tmp_path / "x.png").exists()
    finally:
        held.close()
    assert not g.database_in_use(db)


def test_database_in_use_goes_to_the_running_server(db: Path, tmp_path: Path, stub: str,
                                                    monkeypatch: pytest.MonkeyPatch, pipe: Any) -> None:
    import ragturbo.generate as g
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.types import database_id

    monkeypatch.setattr(g, "DEFAULT_URL", stub)
    _Stub.serves = {"id": database_id(db), "model_fingerprint": "f", "pairs": 4}
    held = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        out = tmp_path / "x.jpg"
        r = CliRunner().invoke(_app(), ["generate", "a red circle", "-o", str(out), "--seed", "7",
                                        "--db", str(db)])
    finally:
        held.close()
    assert r.exit_code == 0, r.output
    assert f"sending the request to {stub}" in r.output and "retrieval ok" in r.output
    assert Image.open(out).format == "JPEG"
    assert _Stub.seen[0]["seed"] == 7 and _Stub.seen[0]["format"] == "jpeg"


def test_url_posts_to_generate(tmp_path: Path, stub: str) -> None:
    out = tmp_path / "y.webp"
    r = CliRunner().invoke(
        _app(), ["generate", "two blue squares", "-o", str(out), "--url", stub, "--k", "2",
                 "--mode", "inject", "--api-key", "secret-key-1"]
    )
    assert r.exit_code == 0, r.output
    assert Image.open(out).format == "WEBP" and "a red circle" in r.output
    assert " used " in r.output and "unknown words: ring" in r.output
    req = _Stub.seen[0]
    assert req["prompt"] == "two blue squares" and req["retrieval"] == {"mode": "inject", "k": 2}
    assert req["_auth"] == "Bearer secret-key-1"


def test_url_unreachable_fails_clearly(tmp_path: Path) -> None:
    r = CliRunner().invoke(_app(), ["generate", "x", "-o", str(tmp_path / "z.png"), "--url", "http://127.0.0.1:9"])
    assert r.exit_code == 1 and "cannot reach the server at http://127.0.0.1:9" in r.output


def test_a_server_with_another_database_is_refused(db: Path, tmp_path: Path, stub: str,
                                                   monkeypatch: pytest.MonkeyPatch, pipe: Any) -> None:
    """--db held by one server, while the default URL answers with another database."""
    import ragturbo.generate as g
    from retrieval.db import DbConfig, open_db_for_pipeline

    monkeypatch.setattr(g, "DEFAULT_URL", stub)
    _Stub.serves = {"id": "0123456789abcdef", "model_fingerprint": "f", "pairs": 10000}
    held = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        r = CliRunner().invoke(_app(), ["generate", "a pink ring", "-o", str(tmp_path / "x.png"),
                                        "--db", str(db)])
    finally:
        held.close()
    assert r.exit_code == 1
    assert f"the server at {stub} serves another database (id 0123456789abcdef, 10000 pairs" in r.output
    assert "--url" in r.output
    assert _Stub.seen == [] and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("serves", ["other", "none"])
def test_url_with_db_checks_the_served_database(tmp_path: Path, stub: str, serves: str) -> None:
    from retrieval.types import database_id

    mine = tmp_path / "mydb"
    _Stub.serves = {"id": "feedfacefeedface", "model_fingerprint": "f", "pairs": 3} if serves == "other" else None
    r = CliRunner().invoke(_app(), ["generate", "x", "-o", str(tmp_path / "z.png"), "--url", stub,
                                    "--db", str(mine)])
    assert r.exit_code == 1 and _Stub.seen == []
    assert ("serves another database" if serves == "other" else "does not say which database") in r.output
    _Stub.serves = {"id": database_id(mine), "model_fingerprint": "f", "pairs": 3}
    r = CliRunner().invoke(_app(), ["generate", "x", "-o", str(tmp_path / "z.png"), "--url", stub,
                                    "--db", str(mine)])
    assert r.exit_code == 0, r.output
    assert len(_Stub.seen) == 1


def test_search_goes_to_the_server_that_holds_the_database(db: Path, stub: str, pipe: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Held by a server on the default URL that names it: the query goes there (not to a
    text encoder here), and the lines are those of a local search."""
    import ragturbo.generate as g
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.types import database_id

    monkeypatch.setattr(g, "DEFAULT_URL", stub)
    _Stub.serves = {"id": database_id(db), "model_fingerprint": "f", "pairs": 4}
    held = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        r = CliRunner().invoke(_app(), ["search", "a red circle", "--k", "3", "--db", str(db)])
        j = CliRunner().invoke(_app(), ["search", "a red circle", "--json", "--db", str(db)])
    finally:
        held.close()
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [" 0.9000  p1  a red circle"]
    assert f"asking {stub}, which serves it" in r.stderr
    assert json.loads(j.stdout) == [{"id": "p1", "caption": "a red circle", "score": 0.9}]
    assert _Stub.seen[0]["query"] == "a red circle" and _Stub.seen[0]["k"] == 3


def test_search_refuses_a_server_with_another_database(db: Path, stub: str, pipe: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import ragturbo.generate as g
    from retrieval.db import DbConfig, open_db_for_pipeline

    monkeypatch.setattr(g, "DEFAULT_URL", stub)
    _Stub.serves = {"id": "0123456789abcdef", "model_fingerprint": "f", "pairs": 10000}
    held = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        r = CliRunner().invoke(_app(), ["search", "a pink ring", "--db", str(db)])
    finally:
        held.close()
    assert r.exit_code == 1
    assert f"the server at {stub} serves another database (id 0123456789abcdef" in r.stderr
    assert "--url" in r.stderr and _Stub.seen == []
    mine = db.parent / "other"
    r = CliRunner().invoke(_app(), ["search", "a pink ring", "--url", stub, "--db", str(mine)])
    assert r.exit_code == 1 and "serves another database" in r.stderr and _Stub.seen == []


def test_search_with_the_database_held_and_no_server_says_so(db: Path, pipe: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ragturbo.generate as g
    from retrieval.db import DbConfig, open_db_for_pipeline

    monkeypatch.setattr(g, "DEFAULT_URL", "http://127.0.0.1:9")
    held = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        r = CliRunner().invoke(_app(), ["search", "a pink ring", "--db", str(db)])
    finally:
        held.close()
    assert r.exit_code == 1 and "is in use by another process" in r.stderr and "--url" in r.stderr
