"""A runtime backend is one class plus one registration line: settings, the factory and the
composition accept it with no other edit, and its declared capabilities are what they check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engines.backends import BackendUnavailable, Capabilities, create_backend, register
from engines.backends import registry as reg
from engines.backends.torch_backend import TorchBackend


class CpuOnlyBackend(TorchBackend):
    """A new backend: the eager pipeline under another name, declared CPU- and float32-only
    and without the small decoder."""

    backend_name = "cpu-only"
    capabilities = Capabilities(dtypes={"cpu": ("float32",)}, vae_decoders=("full",))


@pytest.fixture
def registered() -> Any:
    register("cpu-only", CpuOnlyBackend)  # the one registration line
    yield "cpu-only"
    reg.BACKENDS.pop("cpu-only")
    reg._CLASSES.pop("cpu-only", None)


def test_settings_read_the_capabilities_of_a_registered_backend(registered: str) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    s = Settings(backend=registered, device="cpu")
    assert s.backend == registered and s.dtype == "float32"
    with pytest.raises(ValidationError, match="needs a CPU device, got device=.cuda."):
        Settings(backend=registered, device="cuda:0")
    with pytest.raises(ValidationError, match="vae_decoder='small'"):
        Settings(backend=registered, device="cpu", vae_decoder="small")
    with pytest.raises(ValidationError, match="searches inside its graph"):
        Settings(backend=registered, device="cpu", synthetic_pairs=10)
    with pytest.raises(ValidationError, match="unknown backend 'cpu-0nly'"):
        Settings(backend="cpu-0nly", device="cpu")


def test_factory_and_composition_serve_a_registered_backend(registered: str, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    from retrieval.compose import ImageRequest, build_text_to_image
    from service.seam import _backend_options
    from service.settings import Settings

    s = Settings(backend=registered, device="cpu", model_dir=tiny_model_dir, db_path=tmp_path / "db")
    opts: dict[str, Any] = _backend_options(s)
    assert "buckets" not in opts  # it does not declare buckets
    be = create_backend(s.backend, tiny_model_dir, device=s.device, **opts)
    assert type(be) is CpuOnlyBackend and be.describe()["backend"] == registered
    with pytest.raises(BackendUnavailable, match="float32"):
        create_backend(registered, tiny_model_dir, dtype="bfloat16")
    t2i = build_text_to_image(tiny_model_dir, backend=registered, db_path=tmp_path / "db")
    try:
        (res,), _ = t2i.generate([ImageRequest("a red circle", seed=3, mode="off")])
        assert t2i.backend_name == registered
        assert res.image.shape == (be.resolution, be.resolution, 3)
    finally:
        t2i.close()


def test_the_builtin_backends_declare_their_rules() -> None:
    from engines.backends import capabilities

    assert capabilities("tensorrt").refusal("tensorrt", "cpu", None, "full", {}) is not None
    assert "RAGTURBO_ONNX_DIR" in (capabilities("onnxruntime").refusal("onnxruntime", "cpu", None, "full", {}) or "")
    assert capabilities("onnxruntime").refusal("onnxruntime", "cpu", None, "full", {"onnx_dir": "x"}) is None
    assert [n for n in reg.BACKENDS if capabilities(n).searches] == ["fast"]
    assert capabilities("fast").default_dtype("cuda") == "float16"
    assert capabilities("fast").refusal("fast", "cpu", "float16", "full", {}) is not None
