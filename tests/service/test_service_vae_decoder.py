"""RAGTURBO_VAE_DECODER: full by default, small validated at startup with the path in the
message, passed to the backend, and visible in the model name that /readyz and
ragturbo_build_info report."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.seam import _backend_options
from service.settings import Settings, settings_error_message


def test_default_is_the_full_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTURBO_DEVICE", "cpu")
    s = Settings()
    assert s.vae_decoder == "full"
    assert _backend_options(s)["vae_decoder"] == "full"


def test_small_without_the_folder_fails_with_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTURBO_DEVICE", "cpu")
    monkeypatch.setenv("RAGTURBO_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("RAGTURBO_VAE_DECODER", "small")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert str(tmp_path / "vae_small") in settings_error_message(e.value)


def test_small_is_refused_for_graph_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTURBO_DEVICE", "cpu")
    monkeypatch.setenv("RAGTURBO_BACKEND", "onnxruntime")
    monkeypatch.setenv("RAGTURBO_ONNX_DIR", str(tmp_path))
    monkeypatch.setenv("RAGTURBO_VAE_DECODER", "small")
    with pytest.raises(ValidationError, match="onnxruntime"):
        Settings()
    monkeypatch.setenv("RAGTURBO_VAE_DECODER", "tiny")
    with pytest.raises(ValidationError, match="'tiny'"):
        Settings()


def test_small_reaches_the_backend_and_the_model_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from engines.backends import create_backend
    from engines.random_models import write_model_dir
    from engines.vae_decoder import (
        SMALL_DIR,
        random_small_decoder,
        save_small_decoder,
        small_decoder_kwargs,
    )
    from service.metrics import Metrics

    root = write_model_dir(tmp_path / "m", "tiny", seed=0)
    be = create_backend("torch", root)
    save_small_decoder(random_small_decoder(be.pipe.vae), small_decoder_kwargs(be.pipe.vae.config), root / SMALL_DIR)
    monkeypatch.setenv("RAGTURBO_DEVICE", "cpu")
    monkeypatch.setenv("RAGTURBO_MODEL_DIR", str(root))
    monkeypatch.setenv("RAGTURBO_VAE_DECODER", "small")
    s = Settings()
    opts = _backend_options(s)
    small = create_backend(s.backend, root, device=s.device, **opts)
    assert small.name == f"{be.name}+vae_small"
    m = Metrics()
    m.set_build_info("test", small.backend_name, small.name)
    assert b'model="' + small.name.encode() + b'"' in m.render()
