"""The words a toy model was trained on: what it writes to ``<model dir>/vocabulary.txt``.

Every training, retrieval and adapter caption of the toy world comes from
``toyworld.grammar`` with its held-out phrasings excluded (``held_out=False``), so the
words those captions can hold are a closed set. ``training_words`` enumerates it by
wording a covering set of scenes (every shape, colour, size, count, relation and
background) in every phrasing training may use; the service reports any other word of
a prompt as unknown (``engines.vocabulary``). The held-out phrasing words ("coloured",
"an image showing", "beneath", "against") are therefore unknown to the model: no training
caption used them, although the eval prompts do.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from engines.vocabulary import VOCABULARY_FILE, write_vocabulary
from toyworld.grammar import (
    BG_STYLES,
    FRAMES,
    HELD_OUT,
    NP_STYLES,
    RELATION_WORDS,
    Phrasing,
    caption,
)
from toyworld.scene import ObjectSpec, SceneSpec
from toyworld.vocab import BACKGROUNDS, COLOURS, RELATIONS, SHAPES, SIZES

_WORD = re.compile(r"\w+")


def _specs() -> list[SceneSpec]:
    """Scenes that together use every value of every slot of the grammar."""
    out: list[SceneSpec] = []
    sizes: list[str | None] = [None, *SIZES]
    bgs: list[str | None] = [None, *BACKGROUNDS]
    for shape, colour, size in itertools.product(SHAPES, COLOURS, sizes):
        out.append(SceneSpec("single", (ObjectSpec(shape, colour, size),)))
        out += [SceneSpec("group", (ObjectSpec(shape, colour, size),), count=c) for c in (2, 3)]
    a, b = ObjectSpec(SHAPES[0], next(iter(COLOURS))), ObjectSpec(SHAPES[1], next(iter(COLOURS)))
    out += [SceneSpec("relation", (a, b), relation=r) for r in RELATIONS]
    out += [SceneSpec("single", (a,), background=bg) for bg in bgs]
    return out


def _phrasings(spec: SceneSpec) -> list[Phrasing]:
    styles = [s for s in NP_STYLES if s != HELD_OUT["np_style"]]
    frames = [f for f in FRAMES if f != HELD_OUT["frame"]]
    rels: list[str | None] = [None]
    if spec.relation is not None:
        rels = [w for w in RELATION_WORDS[spec.relation] if w != HELD_OUT["rel_word"]]
    bgs: list[str | None] = [None]
    if spec.background is not None:
        bgs = [b for b in BG_STYLES if b != HELD_OUT["bg_style"]]
    out = []
    for st, one, fr, cop, rel, bg in itertools.product(styles, (False, True), frames, (False, True), rels, bgs):
        ph = Phrasing(np_style=st, numeral_one=one, frame=fr, copula=cop, rel_word=rel, bg_style=bg)
        if not ph.is_held_out():
            out.append(ph)
    return out


def training_words() -> list[str]:
    """Every word a training caption of the toy world can contain, sorted."""
    words: set[str] = set()
    for spec in _specs():
        for ph in _phrasings(spec):
            words.update(_WORD.findall(caption(spec, ph).lower()))
    return sorted(words)


def write_model_vocabulary(model_dir: str | Path) -> Path:
    """Write ``<model_dir>/vocabulary.txt`` from the grammar; returns its path."""
    return write_vocabulary(Path(model_dir) / VOCABULARY_FILE, training_words(),
                            "words of the toy world's training captions (toyworld.vocabulary)")
