"""Concept-dropout training of the H-adapter + decoder, with its matched control.

``train_concepts`` continues a model (the shipped one by default): it builds the rows of
``toyworld.models.concept_rows`` (plain, concept, dropout), then trains two runs on the same
batches with the training job's regression objective (``training.regression.train_rows``) —
``adapter`` (neighbours on) and ``control`` (the same rows, λ = 0), half the time each — each
from its own starting variant. The UNet
encoder, VAE and text encoder stay frozen, so every database's stored H-features stay valid.
Checkpoints (variant files, ``toyworld.fideval`` format) are written every few minutes and
at the end under ``out/``, with ``summary.json``; the rows and the database are cached there
too, so a rerun resumes from them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def cached_database(pipe: Any, n: int, path: Path) -> Any:
    """``toyworld.fideval.Database`` of ``n`` retrieval-split pairs, cached at ``path``."""
    from toyworld.fideval import Database

    if path.is_file():
        d = torch.load(path, weights_only=False)
        if len(d["captions"]) == n:
            return Database(d["captions"], d["images"], d["pooled"], d["features"])
    db = Database.build(pipe, n)
    torch.save({"captions": db.captions, "images": db.images, "pooled": db.pooled, "features": db.features}, path)
    return db


def train_concepts(out: Path, model: Path | None = None, control_init: Path | None = None,
                   adapter_init: Path | None = None, n_rows: int = 3000, n_db: int = 10000,
                   options: Any = None, minutes: float = 30.0, steps: int = 100000, batch_size: int = 64,
                   lr_adapter: float = 4e-4, lr_decoder: float = 4e-5, seed: int = 0,
                   device: str | torch.device = "cpu", workers: int = 0,
                   arms: tuple[str, ...] = ("adapter", "control")) -> dict[str, Any]:
    """Build rows (``options``: a ``concept_rows.RowOptions``), train ``arms`` (adapter and its
    control by default) for ``minutes`` (or ``steps``); returns the summary. The arms start
    from ``adapter_init`` / ``control_init`` (variant files; default: the model's own adapter and
    the shipped control), so a run can continue an earlier one."""
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import SHIPPED_EVAL, save_variant
    from toyworld.models.concept_rows import RowOptions, arm_data, build_rows
    from toyworld.models.variants import apply_variant
    from training.regression import train_rows

    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    opt = options or RowOptions()
    model = model or SHIPPED
    control_init = control_init or SHIPPED_EVAL / "control.safetensors"
    pipe = OneStepPipeline.from_pretrained(model, device=dev)
    t0 = time.perf_counter()
    db = cached_database(pipe, n_db, out / "db.pt")
    rows_f = out / "rows.pt"
    if rows_f.is_file():
        data, counts = torch.load(rows_f, weights_only=False)
    else:
        rows, counts = build_rows(pipe, n_rows, 0, opt, seed, workers=workers)
        data = arm_data(pipe, rows, db)
        torch.save((data, counts), rows_f)
    prep_s = time.perf_counter() - t0
    log.info("rows %s, prep %.0f s", counts, prep_s)
    init_a = adapter_init or save_variant(pipe, out / "init_adapter.safetensors")
    init = {"adapter": init_a, "control": control_init}

    summ: dict[str, Any] = {}
    for name in arms:
        init_f = init[name]
        p = OneStepPipeline.from_pretrained(model, device=dev)
        apply_variant(p, init_f)

        def ckpt(step: int, p: Any, name: str = name) -> None:
            save_variant(p, out / f"{name}.safetensors")
            (out / f"progress_{name}.json").write_text(json.dumps({"step": step}))

        p, summ[name] = train_rows(p, data, name == "control", steps, batch_size, lr_adapter, lr_decoder, dev,
                                   time_limit_s=minutes * 60 / len(arms), checkpoint=ckpt,
                                   checkpoint_every_s=60 if dev.type == "cuda" else 180, seed=seed,
                                   log_every=25)
        ckpt(summ[name]["steps"], p)
    summ.update({"rows": counts, "prep_s": round(prep_s, 1), "model": str(model), "n_db": n_db,
                 "options": vars(opt) if hasattr(opt, "__dict__") else str(opt)})
    (out / "summary.json").write_text(json.dumps(summ, indent=1, default=str))
    return summ


def ship_variant(variant: Path, model_dir: Path | None = None) -> dict[str, str]:
    """Write a variant file's decoder and adapter weights into ``model_dir`` (the shipped model
    by default) in place: only the UNet's decoder tensors and the adapter change, every other
    tensor (encoder, mid block, VAE, text encoder) keeps its bytes. Returns the changed files."""
    from safetensors.torch import load_file, save_file

    from engines.default_model import SHIPPED

    model_dir = model_dir or SHIPPED
    new = load_file(str(variant))
    changed = {}
    for sub, prefix, name in (("unet", "unet.", "diffusion_pytorch_model.safetensors"),
                              ("hadapter", "hadapter.", "diffusion_pytorch_model.safetensors")):
        f = model_dir / sub / name
        cur = load_file(str(f))
        upd = {k[len(prefix):]: v for k, v in new.items() if k.startswith(prefix)}
        extra = [k for k in upd if k not in cur]
        if extra:
            raise ValueError(f"{variant}: keys not in {f}, e.g. {extra[:3]}")
        for k, v in upd.items():
            cur[k] = v.to(cur[k].dtype).contiguous()
        save_file(cur, str(f), metadata={"format": "pt"})
        changed[str(f)] = f"{len(upd)} tensors"
    return changed
