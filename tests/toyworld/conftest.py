"""Shared fixtures of the fidelity tests: random-weight tiny model dirs per UNet layout, and
random adapter-training rows for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toyworld.models.configs import get_family


def _model_dir(root: Path, layout: str) -> Path:
    """A random-weight model dir of the tiny family with the given UNet layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from toyworld.models.common import build_tokenizer
    from toyworld.models.export import export_model_dir

    cfg = get_family("tiny", unet_layout=layout, mid_layers=2 if layout == "mid" else 1)
    work = root / f"w-{layout}"
    torch.manual_seed(0)
    tok = build_tokenizer(work / "text" / "tokenizer")
    te = CLIPTextModel(CLIPTextConfig(**cfg.text_kwargs(len(tok), tok.bos_token_id, tok.eos_token_id)))
    te.save_pretrained(str(work / "text" / "text_encoder"))
    AutoencoderKL(**cfg.vae_kwargs()).save_pretrained(str(work / "vae"))
    UNet2DConditionModel(**cfg.unet_kwargs()).save_pretrained(str(work / "student" / "unet"))
    out = export_model_dir(work, root / f"model-{layout}", cfg)
    meta = json.loads((out / "ragturbo.json").read_text())
    (out / "ragturbo.json").write_text(json.dumps({**meta, "variant": "student"}))
    return out


@pytest.fixture(scope="session")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("fid")
    return {k: _model_dir(root, k) for k in ("mid", "xattn")}
