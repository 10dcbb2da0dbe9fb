"""Checkpoint -> model directory the pipeline loads.

Copies the student model directory, then replaces ``unet/`` by the student UNet with the
trained up-block LoRA merged into its weights (a plain ``UNet2DConditionModel`` again, no
peft at inference) — or, for the regression objective, with its trained decoder weights —
and ``hadapter/`` by the trained adapter. The EMA weights are used when
the run kept them (unless ``use_ema=False``). ``ragturbo.json`` records where it came from.

Note: the exported UNet's files differ from the student's, so the model fingerprint
changes and a feature store ingested for the student must be rebuilt for it (its
H-features are numerically the same: the LoRA touches only the decoder).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

_SKIP = {"unet", "hadapter", ".fingerprint-cache.json"}


def _apply_ema(module: torch.nn.Module, ema: dict[str, torch.Tensor], prefix: str) -> int:
    n = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            key = prefix + name
            if key in ema:
                p.copy_(ema[key].to(p.dtype))
                n += 1
    return n


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    student: str | Path | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a complete model directory at ``out``; returns its path.

    Args:
        ckpt: a checkpoint file or a run directory (its ``latest.pt``).
        out: target directory (must not exist unless ``overwrite``).
        student: the student model dir (default: the one recorded in the checkpoint).
        use_ema: prefer the EMA weights when the checkpoint has them.
    """
    from diffusers import UNet2DConditionModel

    from engines.hadapter import HAdapter
    from engines.modeldir import validate_model_dir
    from training.model import add_up_lora, load_lora_state

    state: dict[str, Any] = load_checkpoint(ckpt)
    src = Path(student or state["student"])
    validate_model_dir(src)
    dst = Path(out)
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"export target {dst} exists; pass overwrite=True / --overwrite")
        if dst.resolve() == src.resolve():
            raise ValueError(f"export target {dst} is the student directory itself")
        shutil.rmtree(dst)
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        if item.name in _SKIP:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)

    ema = state.get("ema") if use_ema else None
    unet = UNet2DConditionModel.from_pretrained(str(src / "unet"), local_files_only=True)
    lc = state["lora_config"]
    if int(lc["rank"]) > 0:
        add_up_lora(unet, int(lc["rank"]), lc["alpha"], lc["targets"])
        load_lora_state(unet, state["lora"])
        if ema is not None:
            _apply_ema(unet, ema, "unet.unet.")
        unet.fuse_lora()
        unet.unload_lora()
    if state.get("decoder"):
        res = unet.load_state_dict(state["decoder"], strict=False)
        if res.unexpected_keys:
            raise ValueError(f"checkpoint decoder keys the student UNet lacks: {res.unexpected_keys[:3]}")
        if ema is not None:
            _apply_ema(unet, ema, "unet.unet.")
    leftover = [k for k in unet.state_dict() if "lora_" in k]
    if leftover:
        raise RuntimeError(f"LoRA layers left after merging: {leftover[:3]}")
    unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)

    adapter = HAdapter(**{k: v for k, v in state["hadapter_config"].items() if not k.startswith("_")})
    adapter.load_state_dict(state["hadapter"])
    if ema is not None:
        _apply_ema(adapter, ema, "hadapter.")
    adapter.save_pretrained(str(tmp / "hadapter"), safe_serialization=True)

    meta_path = tmp / "ragturbo.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    cfg = state.get("config", {})
    meta.update(
        name=f"{meta.get('name', src.name)}-adapter-step{int(state['step'])}",
        trained={
            "from_student": str(src),
            "step": int(state["step"]),
            "control": cfg.get("retrieval") is None,
            "ema": ema is not None,
            "lora_rank": int(lc["rank"]),
            "objective": state.get("objective", "ladd"),
        },
    )
    meta_path.write_text(json.dumps(meta, indent=2))
    validate_model_dir(tmp)
    tmp.rename(dst)
    log.info("exported step %d (%s) to %s", int(state["step"]), "EMA" if ema else "raw", dst)
    return dst
