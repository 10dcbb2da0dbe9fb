"""Shape spec and ONNX export of the tiny model (ONNX graphs, manifest, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engines.export_onnx import (
    ManifestError,
    example_inputs,
    export_onnx,
    file_sha256,
    load_manifest,
)
from engines.random_models import write_model_dir
from engines.shapes import (
    COMPONENTS,
    DimRange,
    ShapeSpec,
    spec_from_arch,
    spec_from_model_dir,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("onnx")
    model = write_model_dir(root / "model", "tiny", adapter_init_std=0.02)
    man = export_onnx(model, root / "onnx")
    return model, root / "onnx", man


# ---------------------------------------------------------------- shape spec
def test_spec_of_sd_turbo_matches_its_architecture() -> None:
    s = spec_from_arch("sd-turbo")
    assert (s.resolution, s.latent_size, s.h_shape, s.embed_dim, s.text_len) == (
        512, 64, (1280, 8, 8), 1024, 77,
    )
    unet = s.component("unet")
    assert unet.input_names == [
        "sample", "timestep", "context", "h_retr", "lam", "controls",
    ]
    assert unet.tensor("controls").concrete(3) == (3, 2)  # one column per engines.request.CONTROLS
    assert unet.dynamic_axes()["h_retr"] == {0: "B", 1: "K"}
    prof = s.profile("unet")
    assert prof["h_retr"] == ((1, 1, 1280, 8, 8), (4, 1, 1280, 8, 8), (16, 8, 1280, 8, 8))
    assert s.profile("vae_decoder")["latent"][2] == (16, 4, 64, 64)
    assert s.component("vae_decoder").outputs[0].concrete(2) == (2, 3, 512, 512)


def test_spec_of_tiny_and_key_tracks_compile_relevant_fields() -> None:
    s = spec_from_arch("tiny")
    assert (s.resolution, s.h_shape, s.embed_dim) == (64, (64, 4, 4), 32)
    assert ShapeSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    bigger = spec_from_arch("tiny", batch=DimRange(1, 4, 32))
    assert bigger.key() != s.key()
    assert spec_from_arch("tiny").key() == s.key()
    with pytest.raises(ValueError, match="min <= opt <= max"):
        DimRange(4, 2, 8)


def test_spec_from_model_dir_equals_spec_from_arch(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m", "tiny")
    a, b = spec_from_model_dir(model), spec_from_arch("tiny")
    assert a.key() == b.key()


# ---------------------------------------------------------------- export
def test_export_writes_checked_graphs_with_external_unet_data(exported) -> None:
    _, out, man = exported
    for comp in COMPONENTS:
        onnx.checker.check_model(str(out / comp / "model.onnx"))
    assert (out / "unet" / "model.onnx.data").stat().st_size > 100_000
    assert not (out / "text_encoder" / "model.onnx.data").exists()
    g = onnx.load(str(out / "unet" / "model.onnx"), load_external_data=False)
    spec_names = [t["name"] for t in man["shapes"]["components"]["unet"]["inputs"]]
    assert [i.name for i in g.graph.input] == spec_names
    assert [o.name for o in g.graph.output] == ["model_output"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.graph.input}
    assert dims["h_retr"] == ["B", "K", 64, 4, 4]
    assert dims["sample"] == ["B", 4, 8, 8]


def test_manifest_records_fingerprint_hashes_and_versions(exported) -> None:
    from engines.modeldir import fingerprint

    model, out, man = exported
    assert man == load_manifest(out, check_hashes=True)
    assert man["fingerprint"] == fingerprint(model)
    assert man["opset"] == 17 and man["versions"]["torch"] == torch.__version__
    assert man["versions"]["onnx"] == onnx.__version__
    data = man["files"]["unet"]["unet/model.onnx.data"]
    assert data["sha256"] == file_sha256(out / "unet" / "model.onnx.data")
    assert ShapeSpec.from_dict(man["shapes"]).key() == man["shape_key"]
    # export verified every graph against torch within 1e-3 (measured ~1e-6)
    assert all(v < 1e-4 for v in man["verify_max_abs_diff"].values()), man["verify_max_abs_diff"]


@pytest.mark.parametrize("b,k", [(1, 1), (5, 8)])
def test_exported_unet_runs_at_any_batch_and_k_in_range(exported, b: int, k: int) -> None:
    _, out, man = exported
    spec = ShapeSpec.from_dict(man["shapes"])
    sess = ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {n: v.numpy() for n, v in example_inputs(spec, "unet", b, k).items()}
    (y,) = sess.run(None, feeds)
    assert y.shape == (b, 4, 8, 8) and np.isfinite(y).all()


def test_tampered_or_missing_export_is_refused(exported, tmp_path: Path) -> None:
    import shutil

    _, out, _ = exported
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with (copy / "vae_decoder" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    load_manifest(copy)  # cheap check passes
    with pytest.raises(ManifestError, match="does not match the sha256"):
        load_manifest(copy, check_hashes=True)
    (copy / "unet" / "model.onnx.data").unlink()
    with pytest.raises(ManifestError, match="model.onnx.data listed in .* is missing"):
        load_manifest(copy)


def test_cli_export_onnx(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ragturbo.cli import _register_all, app

    _register_all()
    model = write_model_dir(tmp_path / "m", "tiny")
    res = CliRunner().invoke(
        app,
        ["export", "onnx", "--out", str(tmp_path / "o"), "--model-dir", str(model),
         "--max-batch", "8", "--no-verify"],
    )
    assert res.exit_code == 0, res.output
    man = load_manifest(tmp_path / "o", check_hashes=True)
    assert man["shapes"]["batch"] == {"min": 1, "opt": 4, "max": 8}
    assert "fingerprint" in res.output
    bad = CliRunner().invoke(
        app, ["export", "onnx", "--out", str(tmp_path / "o2"), "--model-dir", str(model),
              "--opt-batch", "9", "--max-batch", "8"],
    )
    assert bad.exit_code != 0 and "min <= opt <= max" in bad.output


def test_an_export_made_with_the_older_mask_inputs_is_refused_with_what_to_do(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from engines.backends import BackendUnavailable
    from engines.backends.base import GraphBackend
    from engines.shapes import ShapeSpec

    class Graphs(GraphBackend):  # any runtime over exported graphs (onnxruntime, tensorrt)
        backend_name = "graphs"

        @classmethod
        def open(cls, *a, **k):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def _run(self, component, inputs):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    d = spec_from_arch("tiny").to_dict()
    assert ShapeSpec.from_dict(d).stale_unet() is None
    unet = d["components"]["unet"]
    unet["inputs"] = [*unet["inputs"][:-1], {"name": "adapter_mask", "dtype": "float32", "shape": ("B",)},
                      {"name": "inject_mask", "dtype": "float32", "shape": ("B",)}]
    old = ShapeSpec.from_dict(d)
    assert "re-run `ragturbo export onnx`" in (old.stale_unet() or "")
    with pytest.raises(BackendUnavailable, match="adapter_mask"):
        Graphs(tiny_model_dir, spec=old)
    assert Graphs(tiny_model_dir, spec=spec_from_arch("tiny")).spec.stale_unet() is None
