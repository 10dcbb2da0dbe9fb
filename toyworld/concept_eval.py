"""Held-out-concept evaluation: prompts that name a shape no training prompt names.

For every concept of set A and set B (``toyworld.concepts``) and every N in ``ns``, the
database is the retrieval split plus N ingested pairs of each concept (``concept_pairs``,
seed ``INGEST_SEED``: pairs no training row saw), their features computed with the model's
own text encoder, VAE and frozen UNet encoder, as ``ragturbo ingest`` computes them. Each
prompt (``concept_prompts``) x seed gets one image per mode:

* ``adapter`` — the adapter variant through ``retrieval.compose.TextToImage`` (embed, search
  over an in-memory cosine index, gather, λ, generate: the service's path), top-1;
* ``control`` — the control variant (trained on the same rows with λ = 0), same path;
* ``off``     — the adapter variant with retrieval off (independent of N);
* ``oracle``  — the adapter variant given a clean render of the prompt itself (the concept's
  own renderer, the prompt's colour and background) as its neighbour, λ = 1 (independent of N).

A prompt is *drawn* when the detector (``toyworld.concepts.drawn``) finds a blob of the
named colour judged the named shape; ``bg`` is the fraction of prompts that name a
background whose image shows it. Per-prompt means over seeds; paired bootstrap 95 %
intervals for adapter - off and adapter - control. ``retrieved`` is the fraction of
prompts whose top-1 neighbour is a pair of the named concept.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from toyworld.concepts import (
    CONCEPTS,
    Item,
    concept_blobs,
    concept_pairs,
    concept_prompts,
    render_items,
)
from toyworld.vocab import PLAIN_BACKGROUND

log = logging.getLogger(__name__)

INGEST_SEED = 424242
PROMPT_SEED = 99
MODES = ("adapter", "control", "off", "oracle")


def concept_db(pipe: Any, base: Any | None, n: int, shapes: tuple[str, ...] | None = None,
               batch: int = 256) -> tuple[Any, list[str]]:
    """A ``retrieval.db.RetrievalDB``: ``base`` (``toyworld.fideval.Database``, or None) plus
    ``n`` pairs of every concept of ``shapes`` (default: both sets); returns it and the ids."""
    from toyworld.fideval import Database

    ids = list(base.ids) if base is not None else []
    caps = list(base.captions) if base is not None else []
    pooled = [base.pooled.cpu()] if base is not None else []
    feats = [base.features.cpu()] if base is not None else []
    if n:
        for s in shapes or tuple(s for ss in CONCEPTS.values() for s in ss):
            ims, cs = concept_pairs(s, n, INGEST_SEED)
            pv, fv = Database.encode(pipe, ims, cs, batch)
            pooled.append(pv.cpu())
            feats.append(fv.cpu())
            ids += [f"concept-{s}-{i}" for i in range(n)]
            caps += cs
    return Database(caps, None, torch.cat(pooled), torch.cat(feats), ids).as_retrieval_db(), ids


def _score(images: np.ndarray, items: list[tuple[str, str, str | None]]) -> tuple[np.ndarray, np.ndarray]:
    """-> drawn (N,) bool, background right (N,) float (nan where the prompt names none)."""
    d, b = np.zeros(len(images), bool), np.full(len(images), np.nan)
    for i, (im, (shape, colour, bg)) in enumerate(zip(images, items, strict=True)):
        name, blobs = concept_blobs(im)
        d[i] = any(x.colour == colour and x.shape == shape for x in blobs)
        if bg is not None:
            b[i] = float(name == bg)
    return d, b


def evaluate_concepts(pipes: dict[str, Any], base_db: Any, ns: tuple[int, ...] = (0, 5, 20, 100),
                      n_prompts: int = 10, seeds: int = 4, n_boot: int = 2000) -> dict[str, Any]:
    """``pipes``: {"adapter": pipe, "control": pipe}; -> {set: {N: {mode: {...}}}} + intervals."""
    from retrieval.compose import TextToImage
    from toyworld.fideval import compose_images
    from toyworld.scoring import paired_bootstrap, per_prompt

    adapter = pipes["adapter"]
    res: dict[str, Any] = {"ns": list(ns), "n_prompts_per_concept": n_prompts, "seeds": seeds, "sets": {}}
    for set_name, shapes in CONCEPTS.items():
        pr = [(p, s, c, bg) for s in shapes for p, c, bg in concept_prompts(s, n_prompts, PROMPT_SEED)]
        flat = [x for x in pr for _ in range(seeds)]
        prompts = [x[0] for x in flat]
        sd = [1000 * (i // seeds) + i % seeds for i in range(len(flat))]
        items = [(x[1], x[2], x[3]) for x in flat]
        per: dict[str, Any] = {}
        drawn_pp: dict[str, np.ndarray] = {}
        ims = compose_images(TextToImage(adapter, None, retrieval_timeout_s=None), prompts, sd, "off")
        fixed = {"off": ims, "oracle": _oracle(adapter, pr, flat, sd)}
        for n in ns:
            rdb, _ = concept_db(adapter, base_db, n)
            cell: dict[str, Any] = {}
            top: list[str] | None
            for m in MODES:
                if m in fixed:
                    im, top = fixed[m], None
                else:
                    top = []
                    im = compose_images(TextToImage(pipes[m], rdb, retrieval_timeout_s=None), prompts, sd, "adapter",
                                        top_ids=top)
                d, b = _score(im, items)
                drawn_pp[f"{m}@{n}"] = per_prompt(d.astype(float), seeds)
                cell[m] = {"drawn": float(d.mean()), "bg": float(np.nanmean(b)) if np.isfinite(b).any() else None}
                if top is not None:
                    cell[m]["retrieved"] = float(np.mean([t.startswith(f"concept-{x[1]}-") for t, x in zip(top, flat, strict=True)]))
            for a, bb in (("adapter", "off"), ("adapter", "control"), ("control", "off")):
                cell[f"{a}-{bb}"] = paired_bootstrap(drawn_pp[f"{a}@{n}"], drawn_pp[f"{bb}@{n}"], n_boot)
            per[str(n)] = cell
            log.info("set %s N=%d: %s", set_name, n, {m: cell[m]["drawn"] for m in MODES})
        res["sets"][set_name] = per
    return res


def _oracle(pipe: Any, pr: list[Any], flat: list[Any], seeds: list[int]) -> np.ndarray:
    """The adapter given a clean render of each prompt (the concept's renderer), λ = 1."""
    from toyworld.concepts import sample_item

    ref = []
    for i, (_, s, c, bg) in enumerate(pr):
        it = sample_item(s, np.random.default_rng([5, i]), c)
        ref.append(render_items([Item(s, c, 32.0, 32.0, it.extent)], bg or PLAIN_BACKGROUND))
    te_p = pipe.encode_text([x[0] for x in pr])
    h = pipe.retrieval_features(pipe.encode_images(np.stack(ref)), te_p.context).float()
    idx = torch.as_tensor([pr.index(x) for x in flat])
    text = pipe.encode_text([x[0] for x in flat])
    return pipe.generate(text, seeds, "adapter", h[idx][:, None], torch.ones(len(flat), 1)).images


def format_concepts(res: dict[str, Any]) -> str:
    """Markdown: one row per (set, N), drawn % per mode and the two intervals."""
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    def ci(c: dict[str, float]) -> str:
        return f"{100 * c['diff']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]"

    lines = ["| set | N | adapter | control | oracle | off | adapter − off | adapter − control | top-1 is the concept | bg right (adapter) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s, per in res["sets"].items():
        for n, c in per.items():
            lines.append(f"| {s} | {n} | {pct(c['adapter']['drawn'])} | {pct(c['control']['drawn'])} | {pct(c['oracle']['drawn'])} | "
                         f"{pct(c['off']['drawn'])} | {ci(c['adapter-off'])} | {ci(c['adapter-control'])} | "
                         f"{pct(c['adapter'].get('retrieved'))} | {pct(c['adapter']['bg'])} |")
    return "\n".join(lines)
