"""Attribute swaps: an adapter curriculum that gives a retrieved neighbour a job (not shipped).

A swapped caption names one object's colour *or* shape wrongly ("a red circle" -> "a blue
circle"). During adapter training (``lab.toyworld.arms``' ``swap_frac``, driven by
``lab.toyworld.fidelity``) a fraction of the rows feed the student's encoder the swapped caption while the neighbour (retrieved with the true caption)
and the target (the teacher's sample of the true caption) stay right, so the only way to
lower the loss on those rows is to read the attribute from the neighbour — by content, not
by position, since the neighbour's objects sit elsewhere. It imitates the one-step student's
own failure (a wrong colour or shape, most of all on pairs it rarely saw) on prompts where
the student would otherwise have nothing left to learn from retrieval.

A swap never produces a ``HELD_OUT_RARE`` pair: those pairs reach no adapter-training input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from toyworld.vocab import COLOURS, SHAPE_PLURALS, SHAPES

_COLOURS = tuple(COLOURS)
_SINGULAR = {p: s for s, p in SHAPE_PLURALS.items()}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def swap_attribute(caption: str, rng: np.random.Generator,
                   forbidden: Iterable[tuple[str, str]] = (), tries: int = 20) -> str | None:
    """``caption`` with one colour or shape word replaced by another (article fixed), such that
    the parsed caption names no pair of ``forbidden``; None when no such swap was found."""
    from toyworld.parse import parse

    bad = frozenset(forbidden)
    words = caption.split(" ")
    slots = [i for i, w in enumerate(words) if w in COLOURS or w in SHAPES or w in _SINGULAR]
    if not slots:
        return None
    for _ in range(tries):
        i = int(slots[rng.integers(len(slots))])
        w = words[i]
        if w in COLOURS:
            new = str(rng.choice([c for c in _COLOURS if c != w]))
        elif w in SHAPES:
            new = str(rng.choice([s for s in SHAPES if s != w]))
        else:
            new = SHAPE_PLURALS[str(rng.choice([s for s in SHAPES if s != _SINGULAR[w]]))]
        out = list(words)
        out[i] = new
        if i > 0 and out[i - 1] in ("a", "an"):
            out[i - 1] = _article(new)
        text = " ".join(out)
        try:
            pairs = set(parse(text).colour_shape_pairs())
        except ValueError:
            continue
        if not pairs & bad:
            return text
    return None


def swapped_captions(captions: Sequence[str], seed: int,
                     forbidden: Iterable[tuple[str, str]] = ()) -> list[str]:
    """One swapped caption per caption (the caption itself where no allowed swap exists),
    a pure function of (captions, seed)."""
    bad = tuple(forbidden)
    out = []
    for i, c in enumerate(captions):
        s = swap_attribute(c, np.random.default_rng([seed, i]), bad)
        out.append(c if s is None else s)
    return out
