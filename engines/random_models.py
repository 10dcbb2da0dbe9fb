"""Random-weight components from the in-code configs, and writing a model directory.

``build_random_components("sd-turbo")`` gives SD-Turbo-shaped modules for speed work;
``write_model_dir(path, "tiny")`` writes a complete diffusers-layout directory
(configs, safetensors, a locally built CLIP tokenizer, ``hadapter/``) that loads
through ``OneStepPipeline.from_pretrained`` — what the CPU tests use.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from engines.configs import ArchConfig, get_arch
from engines.hadapter import HAdapter
from engines.tokenizer_build import build_clip_tokenizer_files


def _load_tokenizer(tok_dir: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def build_random_components(
    arch: str | ArchConfig, seed: int = 0, adapter_init_std: float = 0.0
) -> dict[str, Any]:
    """Modules with random weights. ``adapter_init_std`` > 0 perturbs the adapter's
    zero-initialised output projection (so tests can see the adapter act)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = get_arch(arch) if isinstance(arch, str) else arch
    with tempfile.TemporaryDirectory(prefix="ragturbo-tok-") as tmp:
        tokenizer = _load_tokenizer(build_clip_tokenizer_files(tmp))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder)).eval()
    unet = UNet2DConditionModel(**cfg.unet).eval()
    vae = AutoencoderKL(**cfg.vae).eval()
    hadapter = HAdapter(**cfg.hadapter).eval()
    if adapter_init_std > 0:
        with torch.no_grad():
            hadapter.proj_out.weight.normal_(0.0, adapter_init_std)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "unet": unet,
        "vae": vae,
        "hadapter": hadapter,
        "scheduler_config": dict(cfg.scheduler),
        "student_timestep": int(cfg.ragturbo.get("student_timestep", 999)),
    }


def save_components(comps: dict[str, Any], out: str | Path, name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write components (as returned by ``build_random_components`` or trained ones)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    comps["text_encoder"].save_pretrained(str(root / "text_encoder"), safe_serialization=True)
    comps["tokenizer"].save_pretrained(str(root / "tokenizer"))
    unet = comps["unet"]
    unet = getattr(unet, "unet", unet)  # accept an HSplitUNet
    unet.save_pretrained(str(root / "unet"), safe_serialization=True)
    comps["vae"].save_pretrained(str(root / "vae"), safe_serialization=True)
    comps["hadapter"].save_pretrained(str(root / "hadapter"), safe_serialization=True)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(comps["scheduler_config"], indent=2)
    )
    meta = {"name": name, "student_timestep": int(comps.get("student_timestep", 999))}
    meta.update(extra or {})
    (root / "ragturbo.json").write_text(json.dumps(meta, indent=2))
    model_index = {
        "_class_name": "RagTurboOneStepPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", comps["scheduler_config"].get("_class_name", "EulerDiscreteScheduler")],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return root


def write_model_dir(
    out: str | Path, arch: str = "tiny", seed: int = 0, adapter_init_std: float = 0.0
) -> Path:
    """A complete model directory with random weights (tiny: ~1 MB, seconds on CPU)."""
    comps = build_random_components(arch, seed=seed, adapter_init_std=adapter_init_std)
    return save_components(comps, out, name=f"{arch}-random-{seed}")
