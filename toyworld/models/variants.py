"""Variant files: the decoder and adapter weights that tell one fine-tuned arm from another.

A variant file is one safetensors file of the UNet's decoder tensors (``unet.*``: up blocks,
``conv_norm_out``, ``conv_out``) and the H-adapter (``hadapter.*``), stored fp16. The arms'
trainers (``toyworld.models.concept_train``, the lab's arm sweeps) write and resume from them;
the fidelity eval (``toyworld.fideval``) applies them to the shipped model (``toyworld/assets/eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.model import DECODER_PREFIXES


def variant_state(pipe: Any) -> dict[str, torch.Tensor]:
    """What distinguishes a variant: decoder weights ("unet.*") and the adapter ("hadapter.*")."""
    sd = {f"unet.{k}": v for k, v in pipe.unet.unet.state_dict().items() if k.startswith(DECODER_PREFIXES)}
    sd.update({f"hadapter.{k}": v for k, v in pipe.hadapter.state_dict().items()})
    return sd


def save_variant(pipe: Any, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # a reader (a copy-out loop) never sees half a file
    save_file({k: v.detach().cpu().half().contiguous() for k, v in variant_state(pipe).items()}, str(tmp))
    tmp.replace(path)
    return path


def apply_variant(pipe: Any, path: Path) -> None:
    """Load a variant file's decoder + adapter weights into ``pipe`` (strict on those keys). A
    file with a query gate, applied to a pipe whose adapter has none (a gated arm on a gate-less
    base model), first gets the pipe a gated adapter: the file's weights decide what it does."""
    from safetensors import safe_open

    from engines.hadapter import HAdapter

    with safe_open(str(path), framework="pt") as f:
        keys = f.keys()
    gated = "hadapter.q_gate" in keys
    if gated and getattr(pipe.hadapter, "q_gate", None) is None:
        ref = next(pipe.hadapter.parameters())
        pipe.hadapter = HAdapter(**{**dict(pipe.hadapter.config), "query_gate": True}).to(ref.device, ref.dtype).eval()
    load_variant(pipe.unet.unet, pipe.hadapter, path)
    pipe.to(pipe.device, pipe.dtype)


def load_variant(unet: torch.nn.Module, hadapter: torch.nn.Module, path: Path) -> None:
    """Load a variant file's decoder weights into a diffusers ``unet`` and its adapter weights
    into ``hadapter`` (strict on those keys; each keeps its own dtype and device). A file
    from an adapter without ``query_gate`` loads into one with it at ``g = 0`` (the same
    function); the reverse is an error."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    dec = {k[5:]: v for k, v in sd.items() if k.startswith("unet.")}
    had = {k[9:]: v for k, v in sd.items() if k.startswith("hadapter.")}
    cur = unet.state_dict()
    missing = [k for k in dec if k not in cur]
    if missing:
        raise ValueError(f"{path}: {len(missing)} decoder keys not in the base UNet, e.g. {missing[:3]}")
    cur.update({k: v.to(cur[k].device, cur[k].dtype) for k, v in dec.items()})
    unet.load_state_dict(cur)
    ref = next(hadapter.parameters())
    had = {k: v.to(ref.device, ref.dtype) for k, v in had.items()}
    if getattr(hadapter, "q_gate", None) is not None and "q_gate" not in had:
        had["q_gate"] = torch.zeros_like(hadapter.q_gate)  # a gate-less adapter: g = 0 is exactly it
    hadapter.load_state_dict(had, strict=True)
