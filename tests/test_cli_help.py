"""`ragturbo --help` as a user reads it: every option and argument described, no `<bool>` on flags."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    import ragturbo.cli as c

    c.flags_without_type()
    c._register_all()
    return c.app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if hasattr(group, "commands"):
        return [x for name, sub in group.commands.items() for x in _commands(sub, (*path, name))]
    return [(path, group)]


def test_every_option_and_argument_is_described(cli: typer.Typer) -> None:
    commands = _commands(typer.main.get_command(cli))
    assert len(commands) > 20
    missing = [(" ".join(path), p.name) for path, cmd in commands for p in cmd.params
               if not (getattr(p, "help", None) or "").strip()]
    assert missing == []


@pytest.mark.parametrize("argv", [["ingest", "--help"], ["search", "--help"], ["serve", "--help"],
                                  ["toyworld", "embedded-db", "--help"]])
def test_flags_show_no_bool_type(cli: typer.Typer, argv: list[str]) -> None:
    out = CliRunner().invoke(cli, argv, env={"COLUMNS": "200"}).output
    assert "--help" in out and "<bool>" not in out, out
    if argv[0] == "ingest":
        assert "<path>" in out and "--rebuild-features" in out  # values keep their type
