"""Checkpoints: atomic writes, RNG states, and the read side used by resume and export.

A checkpoint is one ``torch.save`` dict: ``step``, ``config`` (dict), ``lora_config``,
``hadapter`` / ``lora`` / ``heads`` state dicts, optimiser states, ``ema`` (or None),
and ``rng`` — one entry per rank with the python, numpy, torch (CPU) and CUDA states.
``latest.pt`` is replaced with ``os.replace`` after the file is fully written and
fsync'ed, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

LATEST = "latest.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to ``path`` through a temporary file in the same folder + fsync + rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step-<n>.pt`` and replace ``latest.pt``; prune old step files."""
    d = Path(out_dir)
    path = atomic_save(state, d / f"step-{step:07d}.pt")
    tmp_latest = d / f".{LATEST}.link-{os.getpid()}"
    try:
        if tmp_latest.exists():
            tmp_latest.unlink()
        os.link(path, tmp_latest)  # hard link: no second copy of the bytes
        os.replace(tmp_latest, d / LATEST)
    except OSError:
        atomic_save(state, d / LATEST)
    olds = sorted(d.glob("step-*.pt"))
    for old in olds[: max(0, len(olds) - max(1, keep))]:
        old.unlink(missing_ok=True)
    log.info("checkpoint step %d -> %s", step, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / LATEST
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return torch.load(p, map_location=map_location, weights_only=False)
