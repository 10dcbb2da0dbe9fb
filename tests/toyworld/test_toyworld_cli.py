"""``ragturbo toyworld data``, ``checker-report`` and ``retrieval-data`` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from toyworld.cli import register, toyworld_app


def _app() -> typer.Typer:
    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    return app


def test_data_command_writes_images_and_captions(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        _app(), ["toyworld", "data", "--out", str(tmp_path), "--split", "retrieval", "--n", "5"]
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all((tmp_path / r["file"]).is_file() for r in rows)
    assert {"file", "caption"} <= set(rows[0])


def test_data_command_rejects_unknown_split(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        _app(), ["toyworld", "data", "--out", str(tmp_path), "--split", "test", "--n", "5"]
    )
    assert res.exit_code != 0
    assert "train" in res.output and "'test'" in res.output


def test_checker_report_json() -> None:
    res = CliRunner().invoke(_app(), ["toyworld", "checker-report", "--n", "12", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["conditions"]["clean"]["score"] >= 0.98
    assert rep["conditions"]["noise"]["score"] <= rep["chance"]


def test_sub_app_is_extensible() -> None:
    names = {c.name for c in toyworld_app.registered_commands}
    assert {"data", "checker-report"} <= names


def test_retrieval_data_command_writes_the_shipped_models_split(tmp_path: Path) -> None:
    from ragturbo.cli import _register_all, app
    from toyworld.models.data import make_split

    _register_all()
    res = CliRunner().invoke(app, ["toyworld", "retrieval-data", "--out", str(tmp_path), "--n", "4"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == make_split("retrieval", 4, workers=1, images=False).captions
    assert all((tmp_path / r["file"]).is_file() for r in rows) and "ragturbo ingest" in res.output
