"""TensorRT build around TensorRT: profiles from the spec, engine-cache keys, sidecar checks,
and clear errors without TensorRT. The build+run test needs TensorRT and a GPU (skipped here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.export_onnx import ManifestError, export_onnx
from engines.random_models import write_model_dir
from engines.shapes import COMPONENTS, spec_from_arch
from engines.trt_build import (
    SIDECAR_FORMAT,
    EngineMismatch,
    TensorRTUnavailable,
    build_engines,
    check_sidecar,
    engine_key,
    expected_keys,
    plan_path,
    profile_for,
    sidecar_path,
    verify_engine_dir,
)


def _has_trt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trt")
    model = write_model_dir(root / "model", "tiny", adapter_init_std=0.02)
    export_onnx(model, root / "onnx", verify=False)
    return model, root / "onnx"


def _fake_engine_dir(onnx_dir: Path, out: Path, trt_version: str = "10.9.0", cap: str = "9.0") -> Path:
    """Sidecars as build_engines writes them (plans are placeholders: nothing deserializes here)."""
    out.mkdir(parents=True, exist_ok=True)
    for comp, key in expected_keys(onnx_dir, "fp16", trt_version, cap).items():
        plan_path(out, comp).write_bytes(b"not a real plan")
        sidecar_path(out, comp).write_text(json.dumps({"format": SIDECAR_FORMAT, **key}))
    return out


def test_profiles_come_from_the_shape_spec() -> None:
    spec = spec_from_arch("tiny")
    prof = profile_for(spec, "unet")
    assert prof["sample"] == [[1, 4, 8, 8], [4, 4, 8, 8], [16, 4, 8, 8]]
    assert prof["h_retr"] == [[1, 1, 64, 4, 4], [4, 1, 64, 4, 4], [16, 8, 64, 4, 4]]
    assert prof["timestep"] == [[1], [4], [16]]
    assert profile_for(spec, "text_encoder") == {"input_ids": [[1, 77], [4, 77], [16, 77]]}
    assert set(profile_for(spec, "vae_decoder")) == {"latent"}


def test_engine_key_changes_with_every_field() -> None:
    prof = profile_for(spec_from_arch("tiny"), "unet")
    base = {"onnx_hash": "a" * 64, "tensorrt_version": "10.9.0", "compute_capability": "9.0",
            "precision": "fp16", "profile": prof, "shape_key": "k1"}
    k0 = engine_key(**base)["key"]
    assert engine_key(**base)["key"] == k0
    other_prof = {**prof, "sample": [[1, 4, 8, 8], [8, 4, 8, 8], [16, 4, 8, 8]]}
    for field, value in [("onnx_hash", "b" * 64), ("tensorrt_version", "10.10.0"),
                         ("compute_capability", "8.9"), ("precision", "bf16"),
                         ("profile", other_prof), ("shape_key", "k2")]:
        assert engine_key(**{**base, field: value})["key"] != k0, field
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        engine_key(**{**base, "precision": "int4"})


def test_expected_keys_follow_the_onnx_files(exported, tmp_path: Path) -> None:
    import shutil

    _, onnx_dir = exported
    keys = expected_keys(onnx_dir, "fp16", "10.9.0", "9.0")
    assert set(keys) == set(COMPONENTS)
    assert len({k["key"] for k in keys.values()}) == 3
    copy = tmp_path / "copy"
    shutil.copytree(onnx_dir, copy)
    with pytest.raises(ManifestError, match="does not match the sha256"):
        with (copy / "unet" / "model.onnx.data").open("ab") as f:
            f.write(b"\0")
        expected_keys(copy, "fp16", "10.9.0", "9.0")


def test_sidecar_mismatch_names_the_fields(exported, tmp_path: Path) -> None:
    model, onnx_dir = exported
    from engines.modeldir import fingerprint

    fp = fingerprint(model)
    eng = _fake_engine_dir(onnx_dir, tmp_path / "eng")
    sides = verify_engine_dir(eng, "10.9.0", "9.0", fp, 0.8)
    assert sides["unet"]["precision"] == "fp16"
    with pytest.raises(EngineMismatch, match=r"compute_capability: plan has '9.0', here '8.9'"):
        verify_engine_dir(eng, "10.9.0", "8.9", fp, 0.8)
    with pytest.raises(EngineMismatch, match=r"tensorrt_version: plan has '10.9.0', here '10.13.0'"):
        verify_engine_dir(eng, "10.13.0", "9.0", fp, 0.8)
    with pytest.raises(EngineMismatch, match="fingerprint"):
        verify_engine_dir(eng, "10.9.0", "9.0", "0" * 16, 0.8)
    plan_path(eng, "vae_decoder").unlink()
    with pytest.raises(EngineMismatch, match="no TensorRT plan for vae_decoder"):
        verify_engine_dir(eng, "10.9.0", "9.0", fp, 0.8)
    with pytest.raises(EngineMismatch, match="precision: plan has 'fp16', here 'bf16'"):
        check_sidecar({"precision": "fp16"}, {"precision": "bf16"})


def test_build_without_tensorrt_fails_clearly(exported, tmp_path: Path) -> None:
    if _has_trt():
        pytest.skip("tensorrt is installed here")
    _, onnx_dir = exported
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed: `pip install tensorrt`"):
        build_engines(onnx_dir, tmp_path / "plans")
    with pytest.raises(ManifestError, match="no manifest.json"):
        build_engines(tmp_path, tmp_path / "plans")  # a bad --onnx dir is reported first
    from typer.testing import CliRunner

    from ragturbo.cli import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, ["build", "trt", "--onnx", str(onnx_dir), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "TensorRT is not installed" in res.output
    res = CliRunner().invoke(
        app, ["build", "trt", "--onnx", str(onnx_dir), "--out", str(tmp_path / "p"), "--precision", "int8"]
    )
    assert res.exit_code != 0 and "--precision must be one of" in res.output


@pytest.mark.gpu
def test_tensorrt_build_cache_and_parity(exported, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt on a GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from engines.backends import create_backend

    model, onnx_dir = exported
    sides = build_engines(onnx_dir, tmp_path / "plans", precision="fp32")
    again = build_engines(onnx_dir, tmp_path / "plans", precision="fp32")
    assert {c: s["key"] for c, s in sides.items()} == {c: s["key"] for c, s in again.items()}
    trt_b = create_backend("tensorrt", model, device="cuda", engine_dir=tmp_path / "plans")
    ref = create_backend("torch", model, device="cuda")
    text = ref.encode_text(["a red circle", "blue square"])
    c, h, w = ref.h_shape
    hr, lam = torch.randn(2, 2, c, h, w), torch.rand(2, 2)
    x_ref = ref.denoise(text, [0, 1], ["adapter", "inject"], hr, lam)
    x = trt_b.denoise(text, [0, 1], ["adapter", "inject"], hr, lam)
    assert (x - x_ref).abs().max() <= 1e-2
