"""The one-step pipeline from a model directory: determinism, batching, modes, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.modeldir import ModelDirError, fingerprint, validate_model_dir
from engines.pipeline import OneStepPipeline

PROMPTS = ["a big red circle", "two green triangles", "a purple diamond above an orange cross"]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> OneStepPipeline:
    return OneStepPipeline.from_pretrained(tiny_model_dir)


def _retrieved(pipe: OneStepPipeline, n: int, k: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, k, *pipe.h_shape, generator=g)
    lam = torch.rand(n, k, generator=g) * 0.5 + 0.5
    return h, lam


def test_images_have_native_size_and_uint8(pipe: OneStepPipeline) -> None:
    out = pipe(PROMPTS, [0, 1, 2], "off")
    assert out.images.shape == (3, pipe.resolution, pipe.resolution, 3)
    assert out.images.dtype == np.uint8
    assert set(out.timings_ms) == {"text", "unet", "vae"}
    assert out.images.std() > 0  # not a constant image


def test_same_seed_same_image_different_seed_different(pipe: OneStepPipeline) -> None:
    a = pipe(["a red circle"], [7], "off").images
    b = pipe(["a red circle"], [7], "off").images
    c = pipe(["a red circle"], [8], "off").images
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompt_changes_image(pipe: OneStepPipeline) -> None:
    a = pipe(["a red circle"], [7], "off").images
    b = pipe(["three blue squares"], [7], "off").images
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("k", [1, 3])
def test_batch_equals_single_across_mixed_modes(pipe: OneStepPipeline, k: int) -> None:
    modes = ["adapter", "inject", "off"]
    seeds = [11, 12, 13]
    h, lam = _retrieved(pipe, 3, k)
    text = pipe.encode_text(PROMPTS)
    x0_batch = pipe.denoise(text, seeds, modes, h, lam)
    img_batch = pipe.generate(text, seeds, modes, h, lam).images
    for i in range(3):
        t1 = pipe.encode_text([PROMPTS[i]])
        x0_one = pipe.denoise(t1, [seeds[i]], [modes[i]], h[i : i + 1], lam[i : i + 1])
        assert (x0_batch[i] - x0_one[0]).abs().max().item() <= 1e-4
        img_one = pipe.generate(t1, [seeds[i]], [modes[i]], h[i : i + 1], lam[i : i + 1]).images
        assert np.abs(img_batch[i].astype(int) - img_one[0].astype(int)).max() <= 1


def test_modes_change_the_image_and_lambda_zero_changes_nothing(pipe: OneStepPipeline) -> None:
    text = pipe.encode_text(["a red circle"])
    h, lam = _retrieved(pipe, 1, 1)
    off = pipe.denoise(text, [3], "off")
    ad = pipe.denoise(text, [3], "adapter", h, lam)
    inj = pipe.denoise(text, [3], "inject", h, lam)
    assert (ad - off).abs().max().item() > 1e-3
    assert (inj - off).abs().max().item() > 1e-3
    for mode in ("adapter", "inject"):
        same = pipe.denoise(text, [3], mode, h, torch.zeros(1, 1))
        assert torch.equal(same, off)


def test_retrieval_features_shape_and_determinism(pipe: OneStepPipeline) -> None:
    imgs = pipe(PROMPTS[:2], [0, 1], "off").images
    text = pipe.encode_text(PROMPTS[:2])
    lat = pipe.encode_images(imgs)
    assert lat.shape == (2, pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    h1 = pipe.retrieval_features(lat, text.context)
    h2 = pipe.retrieval_features(pipe.encode_images(imgs), text.context)
    assert h1.shape == (2, *pipe.h_shape)
    assert torch.equal(h1, h2)
    with pytest.raises(ValueError, match="64x64"):
        pipe.encode_images(np.zeros((1, 32, 32, 3), np.uint8))


def test_text_embeddings_shapes(pipe: OneStepPipeline) -> None:
    e = pipe.encode_text(PROMPTS)
    assert e.context.shape == (3, 77, pipe.embed_dim)
    assert e.pooled.shape == (3, pipe.embed_dim)
    with pytest.raises(TypeError):
        pipe.encode_text("a red circle")  # type: ignore[arg-type]


def test_bad_arguments_are_named(pipe: OneStepPipeline) -> None:
    text = pipe.encode_text(["a red circle"])
    with pytest.raises(ValueError, match="seeds"):
        pipe.denoise(text, [1, 2], "off")
    with pytest.raises(ValueError, match="warp"):
        pipe.denoise(text, [1], "warp")


def test_missing_or_malformed_model_dir_names_the_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        validate_model_dir(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(ModelDirError) as e:
        OneStepPipeline.from_pretrained(broken)
    assert str(broken / "vae") in str(e.value) and str(broken / "unet" / "config.json") in str(e.value)
    bad_json = tmp_path / "badjson"
    shutil.copytree(tiny_model_dir, bad_json)
    (bad_json / "text_encoder" / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        validate_model_dir(bad_json)


def test_missing_hadapter_gives_identity_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "noadapter"
    shutil.copytree(tiny_model_dir, d)
    shutil.rmtree(d / "hadapter")
    p = OneStepPipeline.from_pretrained(d)
    text = p.encode_text(["a red circle"])
    h, lam = _retrieved(p, 1, 1)
    assert torch.equal(p.denoise(text, [1], "adapter", h, lam), p.denoise(text, [1], "off"))


def test_fingerprint_tracks_weights_not_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, d)
    f0 = fingerprint(d)
    assert f0 == fingerprint(tiny_model_dir)
    (d / "hadapter" / "config.json").write_text(json.dumps({"_class_name": "HAdapter", "channels": 64}))
    assert fingerprint(d) == f0  # the adapter does not change retrieved features
    w = next((d / "unet").glob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    assert fingerprint(d) != f0


def test_loading_is_offline(tiny_model_dir: Path) -> None:
    """Loading succeeds with the hub disabled and network sockets refused."""
    code = (
        "import socket\n"
        "def _no(*a, **k): raise RuntimeError('network access attempted')\n"
        "socket.socket.connect = _no\n"
        "from engines.pipeline import OneStepPipeline\n"
        f"p = OneStepPipeline.from_pretrained({str(tiny_model_dir)!r})\n"
        "print(p([\"a red circle\"], [0], 'off').images.shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(1, 64, 64, 3)" in r.stdout


def test_cli_generate_writes_png(tiny_model_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "x.png"
    r = subprocess.run(
        [sys.executable, "-m", "ragturbo.cli", "generate", "a red circle", "-o", str(out),
         "--seed", "3", "--model-dir", str(tiny_model_dir), "--mode", "off"],
        capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    im = Image.open(out)
    assert im.format == "PNG" and im.size == (64, 64)
    r = subprocess.run(
        [sys.executable, "-m", "ragturbo.cli", "generate", "a red circle", "-o", str(out),
         "--model-dir", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=180,
    )
    assert r.returncode != 0
    assert "missing" in (r.stderr + r.stdout)
