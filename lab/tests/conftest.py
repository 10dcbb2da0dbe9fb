"""The lab's tests reuse the toy world's fixtures (tiny random model dirs, arm rows)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "toyworld_test_fixtures", Path(__file__).resolve().parents[2] / "tests" / "toyworld" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
dirs = _fixtures.dirs


def _arm_data(pipe: object, n: int = 8, swap: bool = False) -> object:
    """Random adapter-training rows for the tiny mid model (captions "a red circle"; with
    ``swap`` the swapped captions read "a blue circle")."""
    from lab.toyworld.arms import ArmData

    c, hh, ww = pipe.h_shape  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    return ArmData(noise=torch.randn(n, 4, 16, 16, generator=g), target=torch.randn(n, 4, 16, 16, generator=g),
                   context=pipe.encode_text(["a red circle"] * n).context,  # type: ignore[attr-defined]
                   h_nb=torch.randn(n, c, hh, ww, generator=g), lam=torch.full((n,), 0.9),
                   h_self=torch.randn(n, c, hh, ww, generator=g),
                   context_swap=pipe.encode_text(["a blue circle"] * n).context if swap else None)  # type: ignore[attr-defined]


@pytest.fixture
def arm_data() -> Callable[..., Any]:
    """The ``_arm_data`` factory: ``arm_data(pipe, n=8, swap=False)``."""
    return _arm_data
