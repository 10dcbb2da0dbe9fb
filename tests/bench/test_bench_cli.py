"""``ragturbo bench retrieval`` through the CLI, as a user runs it: a small table and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from bench.cli import register

    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    return app


def test_bench_retrieval_small(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    r = CliRunner().invoke(
        _app(),
        [
            "bench",
            "retrieval",
            "--sizes",
            "300",
            "--queries",
            "20",
            "--dim",
            "32",
            "--hnsw-ef",
            "64",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    backends = {row["backend"] for row in data["rows"]}
    assert backends == {
        "qdrant-edge hnsw",
        "qdrant-edge exact (full scan)",
        "qdrant-client local (brute force)",
    }
    # 300 points is below the HNSW threshold: Qdrant scans exactly, so recall is 1
    assert all(row["recall_at_1"] == 1.0 for row in data["rows"])
    assert "| qdrant-edge hnsw | 300 |" in r.output
