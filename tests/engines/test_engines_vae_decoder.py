"""The VAE decoder choice (engines/vae_decoder.py): full by default, the distilled small one on
request, loaded by every backend that can run it, refused clearly by the others."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import BackendUnavailable, create_backend
from engines.default_model import SHIPPED
from engines.modeldir import ModelDirError, file_sha256
from engines.pipeline import OneStepPipeline
from engines.vae_decoder import (
    SMALL_DIR,
    _vae_weights,
    param_count,
    random_small_decoder,
    save_small_decoder,
    small_decoder_kwargs,
)


@pytest.fixture(scope="module")
def model_with_small(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model dir with a (random-weight) small decoder in vae_small/."""
    root = tmp_path_factory.mktemp("tiny-small") / "model"
    shutil.copytree(tiny_model_dir, root)
    pipe = OneStepPipeline.from_pretrained(root)
    dec = random_small_decoder(pipe.vae, 2, seed=3)
    src = _vae_weights(root)
    assert src is not None
    save_small_decoder(dec, small_decoder_kwargs(pipe.vae.config, 2), root / SMALL_DIR,
                       {"distilled_from_vae_sha256": file_sha256(src)})
    return root


def _images(pipe: OneStepPipeline, prompts: list[str]) -> np.ndarray:
    return pipe(prompts, list(range(len(prompts))), "off").images


def test_small_decoder_replaces_only_the_decoder(model_with_small: Path) -> None:
    full = OneStepPipeline.from_pretrained(model_with_small)
    small = OneStepPipeline.from_pretrained(model_with_small, vae_decoder="small")
    assert full.vae_decoder == "full" and small.vae_decoder == "small"
    assert small.name == f"{full.name}+{SMALL_DIR}"  # visible in /readyz and build_info
    assert small.fingerprint == full.fingerprint  # stored H-features stay valid
    assert param_count(small.vae.decoder) < param_count(full.vae.decoder) / 2
    # the encoder (ingest) is the full VAE's
    img = _images(full, ["a red circle"])
    assert torch.equal(full.encode_images(img), small.encode_images(img))
    a, b = _images(full, ["a red circle", "two blue squares"]), _images(small, ["a red circle", "two blue squares"])
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_missing_small_decoder_names_the_path(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelDirError, match=str(tiny_model_dir / SMALL_DIR)):
        OneStepPipeline.from_pretrained(tiny_model_dir, vae_decoder="small")
    with pytest.raises(ModelDirError, match="vae_small"):
        create_backend("torch", tiny_model_dir, vae_decoder="small")
    with pytest.raises(ValueError, match="vae_decoder must be one of"):
        OneStepPipeline.from_pretrained(tiny_model_dir, vae_decoder="tiny")


def test_small_decoder_of_another_vae_is_refused(model_with_small: Path, tmp_path: Path) -> None:
    root = tmp_path / "model"
    shutil.copytree(model_with_small, root)
    cfg_path = root / SMALL_DIR / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["distilled_from_vae_sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="distilled from another VAE"):
        OneStepPipeline.from_pretrained(root, vae_decoder="small")


@pytest.mark.parametrize("backend", ["torch", "torch-opt", "fast"])
def test_backends_run_the_small_decoder(model_with_small: Path, backend: str) -> None:
    ref = _images(OneStepPipeline.from_pretrained(model_with_small, vae_decoder="small"), ["a green cross"])
    be = create_backend(backend, model_with_small, vae_decoder="small")
    assert be.describe()["vae_decoder"] == "small" and be.name.endswith("+vae_small")
    out = be(["a green cross"], [0], "off").images if backend != "fast" else None
    if backend == "fast":
        text = be.encode_text(["a green cross"])
        out = be.generate(text, [0], "off").images
    assert out is not None
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_graph_backends_refuse_the_small_decoder(model_with_small: Path, tmp_path: Path, backend: str) -> None:
    with pytest.raises(BackendUnavailable, match="small"):
        create_backend(backend, model_with_small, onnx_dir=tmp_path, engine_dir=tmp_path, vae_decoder="small")


@pytest.mark.skipif(not (SHIPPED / SMALL_DIR / "config.json").is_file(), reason="no shipped small decoder")
def test_shipped_small_decoder_is_within_its_measured_psnr() -> None:
    """The shipped toy model's distilled decoder: images differ from the full decoder's, by
    no more than the PSNR its training run measured on held-out prompts (3 dB slack for
    these 8 prompts)."""
    from toyworld.models.data import eval_prompts

    measured = json.loads((SHIPPED / SMALL_DIR / "config.json").read_text())["measured"]["psnr_vs_full_student_db"]
    prompts = eval_prompts(6, 2)[0]
    a = _images(OneStepPipeline.from_pretrained(SHIPPED), prompts).astype(np.float64)
    b = _images(OneStepPipeline.from_pretrained(SHIPPED, vae_decoder="small"), prompts).astype(np.float64)
    mse = float(((a - b) ** 2).mean())
    assert mse > 0  # really another decoder
    psnr = 10 * math.log10(255.0**2 / mse)
    assert psnr >= measured - 3.0, (psnr, measured)
