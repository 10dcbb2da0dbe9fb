from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny model directory whose adapter visibly acts (non-zero output proj)."""
    from engines.random_models import write_model_dir

    return write_model_dir(tmp_path_factory.mktemp("tiny-model"), "tiny", seed=0, adapter_init_std=0.05)
