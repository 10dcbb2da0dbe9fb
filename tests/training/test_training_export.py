"""Export: checkpoint -> model directory that loads, generates what training computed, and
exports to ONNX."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.pipeline import OneStepPipeline
from training.adapter import train
from training.checkpoint import load_checkpoint
from training.export import export_checkpoint


@pytest.fixture(scope="module")
def exported(make_config: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    cfg = make_config(root / "run", steps=2)
    cfg["ema_decay"] = 0.5
    res = train(copy.deepcopy(cfg))
    out = export_checkpoint(root / "run", root / "model")
    raw = export_checkpoint(res.checkpoint, root / "model_raw", use_ema=False)
    return {"run": root / "run", "model": out, "raw": raw, "ckpt": res.checkpoint,
            "student": Path(cfg["student"])}


def test_export_loads_and_generates_what_training_computed(exported: dict[str, Path]) -> None:
    from training.model import StudentForward, add_up_lora, load_lora_state

    ck = load_checkpoint(exported["ckpt"])
    # the training-time student: base weights + LoRA + adapter, exactly as in the job
    ref = OneStepPipeline.from_pretrained(exported["student"])
    lc = ck["lora_config"]
    add_up_lora(ref.unet.unet, lc["rank"], lc["alpha"], lc["targets"])
    load_lora_state(ref.unet.unet, ck["lora"])
    ref.hadapter.load_state_dict(ck["hadapter"])
    pipe = OneStepPipeline.from_pretrained(exported["raw"])
    assert pipe.name.endswith("adapter-step2")

    text = pipe.encode_text(["a red circle on the left", "a blue square on the right"])
    g = torch.Generator().manual_seed(0)
    h_retr = torch.randn(2, 2, *pipe.h_shape, generator=g)
    lam = torch.tensor([[0.9, 0.5], [0.7, 0.0]])
    x0 = pipe.denoise(text, [1, 2], "adapter", h_retr, lam)
    with torch.no_grad():
        x0_ref = StudentForward(ref)(pipe.initial_noise([1, 2]), text.context.clone(), h_retr, lam)
    assert (x0 - x0_ref).abs().max() < 1e-4  # LoRA merged into the UNet == LoRA applied

    images = pipe.generate(text, [1, 2], "adapter", h_retr, lam).images
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    student = OneStepPipeline.from_pretrained(exported["student"])
    before = student.generate(text, [1, 2], "adapter", h_retr, lam).images
    assert np.abs(images.astype(int) - before.astype(int)).max() > 0  # training changed the model


def test_ema_export_differs_from_raw(exported: dict[str, Path]) -> None:
    a = OneStepPipeline.from_pretrained(exported["model"]).hadapter.proj_out.weight
    b = OneStepPipeline.from_pretrained(exported["raw"]).hadapter.proj_out.weight
    ck = load_checkpoint(exported["ckpt"])
    assert torch.allclose(a, ck["ema"]["hadapter.proj_out.weight"])
    assert not torch.equal(a, b)


def test_export_refuses_to_overwrite(exported: dict[str, Path]) -> None:
    with pytest.raises(FileExistsError, match="exists"):
        export_checkpoint(exported["ckpt"], exported["model"])


def test_exported_model_exports_to_onnx(exported: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from engines.export_onnx import export_onnx

    manifest = export_onnx(exported["model"], tmp_path / "onnx", verify=True)
    assert manifest["model_name"].endswith("adapter-step2")
    assert all(v <= 1e-3 for v in manifest["verify_max_abs_diff"].values())


def test_export_cli(exported: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from engines.modeldir import validate_model_dir
    from ragturbo.cli import _register_all, app

    _register_all()
    out = tmp_path / "cli_model"
    r = CliRunner().invoke(app, ["train", "export", "--ckpt", str(exported["run"]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    info = validate_model_dir(out)
    assert info.has_hadapter and info.extra["trained"]["step"] == 2 and info.extra["trained"]["ema"]
