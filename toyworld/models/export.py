"""A model dir in the ``OneStepPipeline`` layout from a staged run's outputs, weights in fp16.

``export_model_dir(work, out, cfg)`` copies ``work/{vae, text/text_encoder, text/tokenizer,
student/unet}``, writes an H-adapter (zero-initialised unless one is given), the scheduler
config, ``ragturbo.json`` and ``model_index.json`` (the layout of
``engines.random_models.save_components``), and replaces ``out`` in one rename.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from toyworld.models.configs import SCHEDULER, FamilyConfig

MODEL_INDEX = {
    "_class_name": "RagTurboOneStepPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def save_fp16(module: torch.nn.Module, path: Path) -> None:
    """``module.save_pretrained(path)`` as fp16 safetensors (``module`` itself is left as it is)."""
    copy.deepcopy(module).to("cpu", torch.float16).save_pretrained(str(path), safe_serialization=True)


def export_model_dir(work: Path, out: Path, cfg: FamilyConfig, hadapter: torch.nn.Module | None = None) -> Path:
    """``work``'s stage outputs -> ``out`` (a loadable model dir); returns ``out``."""
    from engines.hadapter import HAdapter

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src, dst in (("vae", "vae"), ("text/text_encoder", "text_encoder"), ("text/tokenizer", "tokenizer"),
                     ("student/unet", "unet")):
        shutil.copytree(work / src, tmp / dst)
    save_fp16(hadapter if hadapter is not None else HAdapter(**cfg.adapter_kwargs()), tmp / "hadapter")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(SCHEDULER), indent=2))
    meta = {"name": cfg.name, "student_timestep": 999, "resolution": 64, "family": cfg.name}
    (tmp / "ragturbo.json").write_text(json.dumps(meta, indent=2))
    (tmp / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    for f in tmp.rglob("done.json"):
        f.unlink()
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
