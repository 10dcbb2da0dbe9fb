"""Shared helpers of the toy-world models: device, autocast and the toy tokenizer."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from engines.tokenizer_build import DEFAULT_WORDS, build_clip_tokenizer_files

TOY_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(DEFAULT_WORDS)
        | {"coloured", "beneath", "against", "plain", "showing", "picture", "image", "there"}
        | {"cross", "crosses", "navy", "brown", "gray", "black", "big", "small"}
    )
)
"""Every word of the toy grammar (each one BPE token) plus common glue words."""

def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)

def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()

def build_tokenizer(out_dir: str | Path) -> Any:
    """The toy tokenizer (``engines.tokenizer_build`` with ``TOY_WORDS``), loaded."""
    from transformers import CLIPTokenizer

    d = build_clip_tokenizer_files(out_dir, TOY_WORDS)
    return CLIPTokenizer.from_pretrained(str(d), local_files_only=True)

def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """captions (N) -> input ids (N,77), padded like the pipeline."""
    return tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
