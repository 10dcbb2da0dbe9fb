"""Rules kept in one place: which model directory (``resolve_model_dir``: explicit >
$RAGTURBO_MODEL_DIR > the embedded default, itself ``shipped_model_dir``), the batch buckets, a graph backend's device
and dtype defaults."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.default_model as dm

    shipped = tmp_path / "shipped"
    (shipped / "unet").mkdir(parents=True)
    (shipped / "unet" / "config.json").write_text("{}")
    monkeypatch.setattr(dm, "SHIPPED", shipped)
    monkeypatch.setenv("RAGTURBO_MODEL_DIR", str(tmp_path / "from-env"))
    assert dm.resolve_model_dir(tmp_path / "given", tmp_path) == tmp_path / "given"
    assert dm.resolve_model_dir(None, tmp_path) == tmp_path / "from-env"
    assert dm.resolve_model_dir(None, tmp_path, read_env=False) == shipped
    monkeypatch.delenv("RAGTURBO_MODEL_DIR")
    assert dm.resolve_model_dir(None, tmp_path) == shipped


def test_the_shipped_model_dir_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$RAGTURBO_SHIPPED_MODEL_DIR moves the embedded default; unset, it is ``SHIPPED``."""
    import engines.default_model as dm

    moved = tmp_path / "moved"
    (moved / "unet").mkdir(parents=True)
    (moved / "unet" / "config.json").write_text("{}")
    monkeypatch.delenv("RAGTURBO_MODEL_DIR", raising=False)
    monkeypatch.delenv("RAGTURBO_SHIPPED_MODEL_DIR", raising=False)
    assert dm.shipped_model_dir() == dm.SHIPPED
    monkeypatch.setenv("RAGTURBO_SHIPPED_MODEL_DIR", str(moved))
    assert dm.shipped_model_dir() == moved
    assert dm.resolve_model_dir(None, tmp_path) == moved
    assert dm.resolve_model_dir(tmp_path / "given", tmp_path) == tmp_path / "given"


def test_settings_use_the_resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.default_model as dm
    from service.settings import Settings

    monkeypatch.setattr(dm, "SHIPPED", tmp_path / "absent")
    monkeypatch.setattr(dm, "default_model_dir", lambda data_dir: Path(data_dir) / "default")
    monkeypatch.delenv("RAGTURBO_MODEL_DIR", raising=False)
    assert Settings(db_path=tmp_path).resolved_model_dir() == tmp_path / "default"
    assert Settings(db_path=tmp_path, model_dir=tmp_path / "m").resolved_model_dir() == tmp_path / "m"


def test_batch_buckets_come_from_one_place() -> None:
    import inspect

    from engines.backends.fast_backend import FastBackend
    from engines.backends.torch_backend import TorchOptBackend
    from engines.shapes import BATCH_BUCKETS, ShapeSpec, batch_buckets

    assert batch_buckets(8) == (1, 2, 4, 8) and batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(32) == (*BATCH_BUCKETS, 32) and batch_buckets(8, [6, 1, 3, 3]) == (1, 3, 6)
    assert ShapeSpec.__dataclass_fields__["batch"].default.max == BATCH_BUCKETS[-1]
    for init in (FastBackend.__init__, TorchOptBackend.__init__):
        assert inspect.signature(init).parameters["buckets"].default is BATCH_BUCKETS


def test_device_and_dtype_defaults() -> None:
    import torch

    from engines.backends import BackendUnavailable
    from engines.backends.base import device_and_dtype
    from engines.backends.fast_backend import FastBackend
    from engines.backends.torch_backend import TorchOptBackend

    assert device_and_dtype(FastBackend, "cpu", None) == (torch.device("cpu"), torch.float32)
    assert device_and_dtype(FastBackend, "cpu", torch.bfloat16)[1] == torch.bfloat16
    with pytest.raises(BackendUnavailable, match="'torch-opt' runs dtype .* on cpu.*float16 needs CUDA"):
        device_and_dtype(TorchOptBackend, "cpu", torch.float16)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            device_and_dtype(FastBackend, "cuda", None)
