"""Deterministic data of the toy world for the model family: train / retrieval / eval.

Item ``i`` of a split is a pure function of (split seed, i): its own
``np.random.default_rng([seed, i])`` draws the scene, the caption and the layout, so
any range of items can be generated in parallel and regenerated bit-identically
(the retrieval database is rebuilt from it at first start instead of being shipped).

Long tail: ``RARE_PAIRS`` are (colour, shape) combinations kept with probability
``RARE_KEEP`` in the training split (teacher, student, VAE, text encoder), present at
their natural rate in the retrieval split, and half of the eval prompts name one.
Eval prompts use the grammar's held-out phrasings (never seen in training).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

from toyworld.grammar import describe
from toyworld.render import render
from toyworld.scene import Scene, SceneSpec, sample_scene

log = logging.getLogger(__name__)

RARE_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("green", "diamond"),
        ("blue", "cross"),
        ("yellow", "circle"),
        ("purple", "square"),
        ("orange", "diamond"),
        ("white", "triangle"),
        ("cyan", "cross"),
    }
)
"""(colour, shape) combinations that are rare in training and present in retrieval."""
RARE_KEEP = 0.03
SPLIT_SEEDS = {"train": 1001, "retrieval": 2002, "eval": 3003, "natural": 4004, "adapter": 5005, "skewed": 6006}

HELD_OUT_RARE: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("yellow", "circle"), ("purple", "square"), ("cyan", "cross")}
)
"""Four of the eight rare pairs that no adapter-training prompt names: they are
only in the retrieval split and the eval prompts, so only retrieval can bring them in."""
SEEN_RARE: frozenset[tuple[str, str]] = RARE_PAIRS - HELD_OUT_RARE


def is_long_tail(spec: SceneSpec) -> bool:
    """True when the spec names a rare (colour, shape) pair."""
    return any(p in RARE_PAIRS for p in spec.colour_shape_pairs())


def rare_group(spec: SceneSpec) -> str:
    """``held_out_rare`` (names a pair of HELD_OUT_RARE), ``seen_rare`` (another rare pair) or ``common``."""
    pairs = set(spec.colour_shape_pairs())
    if pairs & HELD_OUT_RARE:
        return "held_out_rare"
    if pairs & SEEN_RARE:
        return "seen_rare"
    return "common"


@dataclass
class Split:
    """images uint8 (N,64,64,3) (None for eval prompts), captions, stated specs, long-tail flags."""

    name: str
    images: np.ndarray | None
    captions: list[str]
    specs: list[SceneSpec]
    long_tail: np.ndarray  # bool (N,)

    def __len__(self) -> int:
        return len(self.captions)


def _skewed_scene(rng: np.random.Generator, avoid: frozenset[tuple[str, str]] = frozenset()) -> Scene:
    """The train split's skew: a scene with a long-tail pair is kept with p = RARE_KEEP; a scene
    naming a pair of ``avoid`` is never kept."""
    while True:
        scene = sample_scene(rng)
        if set(scene.spec.colour_shape_pairs()) & avoid:
            continue
        if not is_long_tail(scene.spec) or rng.random() < RARE_KEEP:
            return scene


def _scene_where(rng: np.random.Generator, ok: Callable[[SceneSpec], bool]) -> Scene:
    """The first natural-rate scene whose spec passes ``ok``."""
    while True:
        scene = sample_scene(rng)
        if ok(scene.spec):
            return scene


_SCENES: dict[str, Callable[[np.random.Generator, int], Scene]] = {
    "train": lambda rng, i: _skewed_scene(rng),
    "retrieval": lambda rng, i: sample_scene(rng),
    # the unskewed world (every pair at its natural rate): the shipped family's teacher's data
    "natural": lambda rng, i: sample_scene(rng),
    # adapter-training prompts: the natural rate, minus every scene naming a HELD_OUT_RARE pair
    "adapter": lambda rng, i: _scene_where(rng, lambda s: not set(s.colour_shape_pairs()) & HELD_OUT_RARE),
    # the student's world: the train split's skew and no scene with a HELD_OUT_RARE pair at all
    "skewed": lambda rng, i: _skewed_scene(rng, HELD_OUT_RARE),
    # even i: a common prompt; odd i: a long-tail prompt (held-out phrasings)
    "eval": lambda rng, i: _scene_where(rng, lambda s: is_long_tail(s) == (i % 2 == 1)),
}


def split_item(name: str, i: int) -> tuple[Scene, str, SceneSpec]:
    """Item ``i`` of split ``name``: its scene, caption and the spec the caption states."""
    rng = np.random.default_rng([SPLIT_SEEDS[name], i])
    scene = _SCENES[name](rng, i)
    cap, said = describe(scene.spec, rng, held_out=name == "eval")
    return scene, cap, said


def _chunk(args: tuple[str, int, int, bool]) -> list[tuple[np.ndarray | None, str, SceneSpec]]:
    name, lo, hi, images = args
    return [(render(scene) if images else None, cap, said)
            for scene, cap, said in (split_item(name, i) for i in range(lo, hi))]


def make_split(name: str, n: int, workers: int | None = None, start: int = 0, images: bool = True) -> Split:
    """Items start..start+n-1 of split ``name`` (train, retrieval, eval, ...), generated in
    parallel; ``images=False`` skips the renders (``Split.images`` None: captions and specs
    only, the same ones; the eval split never has images)."""
    if name not in _SCENES:
        raise ValueError(f"unknown split {name!r}; choose one of {sorted(_SCENES)}")
    if n < 1:
        raise ValueError(f"split size must be >= 1, got {n}")
    workers = workers or min(32, os.cpu_count() or 1)
    step = max(1, min(2000, n // (4 * workers) + 1))
    if start < 0:
        raise ValueError(f"split start must be >= 0, got {start}")
    images = images and name != "eval"
    jobs = [(name, lo, min(start + n, lo + step), images) for lo in range(start, start + n, step)]
    if workers > 1 and len(jobs) > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_chunk, jobs)
    else:
        parts = [_chunk(j) for j in jobs]
    items = [it for part in parts for it in part]
    caps = [c for _, c, _ in items]
    specs = [s for _, _, s in items]
    imgs = np.stack([im for im, _, _ in items]) if images else None  # type: ignore[misc]
    tail = np.array([is_long_tail(s) for s in specs], dtype=bool)
    log.info("split %s: %d items from %d, %d long-tail", name, n, start, int(tail.sum()))
    return Split(name=name, images=imgs, captions=caps, specs=specs, long_tail=tail)


def eval_prompts(n_common: int, n_longtail: int) -> tuple[list[str], list[bool]]:
    """The eval split's held-out prompts: n_common common then n_longtail long-tail ones."""
    m = 2 * max(n_common, n_longtail)
    sp = make_split("eval", m, workers=1)
    common = [c for c, t in zip(sp.captions, sp.long_tail, strict=True) if not t][:n_common]
    tail = [c for c, t in zip(sp.captions, sp.long_tail, strict=True) if t][:n_longtail]
    return common + tail, [False] * len(common) + [True] * len(tail)
