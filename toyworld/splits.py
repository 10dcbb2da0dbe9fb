"""Deterministic train / retrieval-database / eval splits and their on-disk writer.

Every example ``i`` of split ``name`` draws from its own generator
``np.random.default_rng([seed, SPLIT_CODES[name], i])``: the first k examples do not
depend on ``n``, and the three splits use disjoint random streams, so the retrieval
images are not training images (tests check the rendered bytes).

Long tail: the colour+shape pairs in ``LONG_TAIL_PAIRS`` are rare in ``train``
(a scene containing one is kept with probability ``TRAIN_LONG_TAIL_KEEP``, which
gives <= 1% of training images), common in ``retrieval`` (every 5th example is
forced to contain one, on top of their natural ~14%), and a quarter of ``eval``.

Eval composition by ``i % 4``: 0 and 1 common combination + seen phrasing, 2 long-tail
pair + seen phrasing, 3 common combination + held-out phrasing (see
``toyworld.grammar.HELD_OUT``). Train and retrieval captions never use held-out
phrasings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from toyworld.grammar import HELD_OUT, describe
from toyworld.parse import parse
from toyworld.render import render
from toyworld.scene import ObjectSpec, Scene, SceneSpec, layout, sample_spec
from toyworld.vocab import SHAPES

logger = logging.getLogger(__name__)

Split = Literal["train", "retrieval", "eval"]
SPLIT_CODES: dict[str, int] = {"train": 1, "retrieval": 2, "eval": 3}

LONG_TAIL_PAIRS: tuple[tuple[str, str], ...] = (
    ("orange", "circle"),
    ("cyan", "triangle"),
    ("white", "diamond"),
    ("purple", "cross"),
)
"""(colour, shape) pairs that are rare in training and present in the retrieval DB."""
TRAIN_LONG_TAIL_KEEP = 0.05
RETRIEVAL_FORCE_EVERY = 5


class Example(NamedTuple):
    """A rendered-scene description and one caption of it (``caption`` may omit sizes
    or the background, which ``scene`` always fixes)."""

    scene: Scene
    caption: str


def has_long_tail(spec: SceneSpec) -> bool:
    """True when any object of the spec is a ``LONG_TAIL_PAIRS`` colour+shape pair."""
    return any(p in LONG_TAIL_PAIRS for p in spec.colour_shape_pairs())


def is_held_out_caption(caption: str) -> bool:
    """True when the caption uses a phrasing reserved for evaluation."""
    words = f" {caption.lower()} "
    return (
        f" {HELD_OUT['np_style']} " in words
        or " image showing " in words
        or f" {HELD_OUT['rel_word']} " in words
        or f" {HELD_OUT['bg_style']} " in words
    )


def _rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], i])


def _force_long_tail(spec: SceneSpec, pair: tuple[str, str], rng: np.random.Generator) -> SceneSpec:
    colour, shape = pair
    first = replace(spec.objects[0], colour=colour, shape=shape)
    objs: tuple[ObjectSpec, ...] = (first,)
    if spec.kind == "relation":
        other = spec.objects[1]
        if other.shape == shape:
            others = [s for s in SHAPES if s != shape]
            other = replace(other, shape=others[int(rng.integers(len(others)))])
        objs = (first, other)
    return replace(spec, objects=objs)


def _common_spec(rng: np.random.Generator) -> SceneSpec:
    while True:
        spec = sample_spec(rng)
        if not has_long_tail(spec):
            return spec


def train_example(i: int, seed: int = 0) -> Example:
    """Training example i: long-tail pairs kept with p = TRAIN_LONG_TAIL_KEEP."""
    rng = _rng(seed, "train", i)
    while True:
        spec = sample_spec(rng)
        if not has_long_tail(spec) or rng.random() < TRAIN_LONG_TAIL_KEEP:
            break
    scene = layout(spec, rng)
    return Example(scene, describe(scene.spec, rng, held_out=False)[0])


def retrieval_example(i: int, seed: int = 0) -> Example:
    """Retrieval-DB example i: natural distribution, every 5th forced long-tail."""
    rng = _rng(seed, "retrieval", i)
    spec = sample_spec(rng)
    if i % RETRIEVAL_FORCE_EVERY == 0:
        pair = LONG_TAIL_PAIRS[(i // RETRIEVAL_FORCE_EVERY) % len(LONG_TAIL_PAIRS)]
        spec = _force_long_tail(spec, pair, rng)
    scene = layout(spec, rng)
    return Example(scene, describe(scene.spec, rng, held_out=False)[0])


def eval_example(i: int, seed: int = 0) -> Example:
    """Eval example i: the prompt and a reference render that satisfies it."""
    rng = _rng(seed, "eval", i)
    slot = i % 4
    if slot == 2:
        pair = LONG_TAIL_PAIRS[(i // 4) % len(LONG_TAIL_PAIRS)]
        spec = _force_long_tail(sample_spec(rng), pair, rng)
    else:
        spec = _common_spec(rng)
    scene = layout(spec, rng)
    return Example(scene, describe(scene.spec, rng, held_out=slot == 3)[0])


_MAKERS = {"train": train_example, "retrieval": retrieval_example, "eval": eval_example}


def split(name: str, n: int, seed: int = 0) -> list[Example]:
    """The first ``n`` examples of split ``name`` ("train", "retrieval" or "eval")."""
    if name not in _MAKERS:
        raise ValueError(f"unknown split {name!r}; expected one of {tuple(_MAKERS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_MAKERS[name](i, seed) for i in range(n)]


def train_split(n: int, seed: int = 0) -> list[Example]:
    return split("train", n, seed)


def retrieval_split(n: int, seed: int = 0) -> list[Example]:
    return split("retrieval", n, seed)


def eval_split(n: int, seed: int = 0) -> list[Example]:
    return split("eval", n, seed)


def example_record(file: str, ex: Example) -> dict[str, object]:
    """One captions.jsonl row: ``file`` and ``caption`` (the ingest format) plus tags."""
    return {
        "file": file,
        "caption": ex.caption,
        "long_tail": has_long_tail(parse(ex.caption)),
        "held_out_phrasing": is_held_out_caption(ex.caption),
        "scene": ex.scene.to_dict(),
    }


def write_split(out_dir: str | Path, name: str, n: int, seed: int = 0) -> Path:
    """Write ``n`` examples of a split to ``out_dir``: ``NNNNNN.png`` images (64x64 RGB),
    ``captions.jsonl`` (fields file, caption, long_tail, held_out_phrasing, scene) and,
    for ``eval``, ``prompts.txt`` with one prompt per line. Returns the jsonl path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = split(name, n, seed)
    jsonl = out / "captions.jsonl"
    with jsonl.open("w", encoding="utf-8") as f:
        for i, ex in enumerate(examples):
            file = f"{i:06d}.png"
            Image.fromarray(render(ex.scene)).save(out / file)
            f.write(json.dumps(example_record(file, ex)) + "\n")
    if name == "eval":
        (out / "prompts.txt").write_text("".join(ex.caption + "\n" for ex in examples), "utf-8")
    logger.info("wrote %d %s examples to %s", n, name, out)
    return jsonl
