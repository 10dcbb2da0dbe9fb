"""`make run` installs the service's dependencies only; `make test` adds the dev extras."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    # -W pyproject.toml: as if it changed, so the install recipes print even where a .venv exists
    res = subprocess.run(["make", "-n", "-W", "pyproject.toml", target], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    return res.stdout


def test_make_run_installs_no_dev_extras() -> None:
    out = _dry_run("run")
    assert "pip install -q -e . &&" in out, out
    assert "[dev]" not in out, out


def test_make_test_adds_the_dev_extras() -> None:
    out = _dry_run("test")
    assert "-e '.[dev]'" in out, out
    assert "pytest" in out


def test_dev_tools_are_not_service_dependencies() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(meta["dependencies"])
    for tool in ("pytest", "schemathesis", "hadolint", "ruff", "openai", "kubernetes-validate"):
        assert tool not in base, tool
        assert any(d.startswith(tool) for d in meta["optional-dependencies"]["dev"]), tool
