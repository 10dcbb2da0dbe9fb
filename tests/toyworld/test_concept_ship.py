"""Shipping a concept-trained variant changes only the decoder and adapter tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def test_ship_variant_keeps_every_encoder_tensor(tmp_path: Path) -> None:
    from engines.default_model import SHIPPED
    from toyworld.models.concept_train import ship_variant

    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    unet_f = model / "unet" / "diffusion_pytorch_model.safetensors"
    before = load_file(str(unet_f))
    dec = next(k for k in before if k.startswith("up_blocks."))
    had = load_file(str(model / "hadapter" / "diffusion_pytorch_model.safetensors"))
    variant = {f"unet.{dec}": before[dec] + 1, **{f"hadapter.{k}": v * 0 for k, v in had.items()}}
    save_file({k: v.contiguous() for k, v in variant.items()}, str(tmp_path / "v.safetensors"))
    ship_variant(tmp_path / "v.safetensors", model)
    after = load_file(str(unet_f))
    assert after.keys() == before.keys()
    assert torch.equal(after[dec], before[dec] + 1)
    for k, v in before.items():
        if k != dec:
            assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    had2 = load_file(str(model / "hadapter" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.count_nonzero(v) == 0 for v in had2.values())
