"""Checker scores of many images, in parallel, and paired bootstrap intervals.

``score_images`` answers each prompt's questions about its image (``toyworld.checker``)
and returns one row per image: ``overall``, the per-category fractions, foreground and
clean components (for realism). It forks worker processes (numpy only, so a parent that
holds a CUDA context is fine). ``paired_bootstrap`` resamples *prompts* (the seeds of a
prompt stay together) and gives the 95 % percentile interval of a mean difference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from multiprocessing import get_context
from typing import Any

import numpy as np


def _score_chunk(args: tuple[np.ndarray, list[str]]) -> list[dict[str, Any]]:
    from toyworld.checker import CATEGORIES, questions, score_analysis
    from toyworld.detect import analyse

    images, prompts = args
    out = []
    for im, p in zip(images, prompts, strict=True):
        a = analyse(im)
        r = score_analysis(p, questions(p), a)
        out.append({"overall": r.score, **{c: r.per_category[c] for c in CATEGORIES if c in r.per_category},
                    "fg": a.foreground_components, "clean": a.clean_components})
    return out


def score_images(images: np.ndarray, prompts: Sequence[str], workers: int | None = None) -> list[dict[str, Any]]:
    """uint8 (N,H,W,3) images and N prompts -> N score rows (see module doc)."""
    n = len(prompts)
    if len(images) != n:
        raise ValueError(f"{len(images)} images for {n} prompts")
    workers = workers or max(1, min(16, os.cpu_count() or 1))
    step = max(1, -(-n // (4 * workers)))
    jobs = [(images[i : i + step], list(prompts[i : i + step])) for i in range(0, n, step)]
    if workers > 1 and len(jobs) > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_score_chunk, jobs)
    else:
        parts = [_score_chunk(j) for j in jobs]
    return [r for part in parts for r in part]


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean overall and per-category score, realism (clean / foreground components), n."""
    from toyworld.checker import CATEGORIES

    res: dict[str, Any] = {"n": len(rows), "overall": float(np.mean([r["overall"] for r in rows])) if rows else None}
    for c in CATEGORIES:
        vals = [r[c] for r in rows if c in r]
        res[c] = float(np.mean(vals)) if vals else None
    fg = sum(r["fg"] for r in rows)
    res["realism"] = float(sum(r["clean"] for r in rows) / fg) if fg else 0.0
    return res


def per_prompt(values: Sequence[float], seeds_per_prompt: int) -> np.ndarray:
    """Flat (prompt-major) per-image values -> per-prompt means (P,)."""
    v = np.asarray(values, dtype=np.float64)
    return v.reshape(-1, seeds_per_prompt).mean(1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over prompts (P,) and its 95 % bootstrap interval (prompts resampled)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(d.size)}
