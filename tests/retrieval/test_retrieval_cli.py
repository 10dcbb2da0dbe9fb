"""The CLI as a user runs it: ingest, search --json, generate with retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from conftest import make_pairs, write_jsonl
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


def test_ingest_search_generate(model_dir: Path, tmp_path: Path) -> None:
    app, run = _app(), CliRunner()
    rows = make_pairs(tmp_path / "imgs", 6) + [{"file": "gone.png", "caption": "missing"}]
    caps = write_jsonl(tmp_path / "caps.jsonl", rows)
    db = tmp_path / "db"
    base = ["--db", str(db), "--model-dir", str(model_dir)]
    r = run.invoke(
        app,
        [
            "ingest",
            "--images",
            str(tmp_path / "imgs"),
            "--captions",
            str(caps),
            "--batch",
            "4",
            *base,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "6 added" in r.output and "missing file" in r.output
    assert (
        json.loads((db / "ingest-rejects.jsonl").read_text().splitlines()[0])["file"] == "gone.png"
    )

    r = run.invoke(app, ["search", rows[2]["caption"], "--k", "3", "--json", *base])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout.strip().splitlines()[-1])
    assert [set(h) for h in hits] == [{"id", "caption", "score"}] * 3
    assert hits[0]["caption"] == rows[2]["caption"] and hits[0]["score"] > 0.9999

    r = run.invoke(app, ["search", rows[2]["caption"], *base])
    assert rows[2]["caption"] in r.stdout.splitlines()[0]

    out = tmp_path / "o.png"
    r = run.invoke(
        app,
        ["generate", rows[1]["caption"], "-o", str(out), "--k", "2", "--min-score", "0.1", *base],
    )
    assert r.exit_code == 0, r.output
    assert "retrieval ok" in r.output and rows[1]["caption"] in r.output and out.stat().st_size > 0


def test_search_without_database_fails_clearly(model_dir: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        _app(), ["search", "x", "--db", str(tmp_path / "none"), "--model-dir", str(model_dir)]
    )
    assert r.exit_code == 2 and "ragturbo ingest" in r.output
