"""The lab's tests reuse the toy world's fixtures (tiny random model dirs, arm rows)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "toyworld_test_fixtures", Path(__file__).resolve().parents[2] / "tests" / "toyworld" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
dirs = _fixtures.dirs
arm_data = _fixtures.arm_data
