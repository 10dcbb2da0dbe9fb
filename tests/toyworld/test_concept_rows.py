"""Concept-dropout rows: random silhouettes, hidden shape words, and where the target's object goes."""

from __future__ import annotations

import numpy as np

from toyworld.concepts import RANDOM_PREFIX, SET_A, coverage
from toyworld.models.concept_rows import RowOptions, make_row
from toyworld.models.data import make_split
from toyworld.vocab import COLOURS, SHAPES


def _centre(img: np.ndarray, colour: str) -> tuple[float, float]:
    d = np.abs(img.astype(float) - np.asarray(COLOURS[colour], dtype=float)).sum(-1)
    ys, xs = np.nonzero(d < 40)
    assert len(xs) > 5, "no pixels of the colour"
    return float(xs.mean()), float(ys.mean())


def test_random_silhouettes_are_deterministic_distinct_and_not_empty() -> None:
    covs = [coverage(f"{RANDOM_PREFIX}{n}", 22.0, 32.0, 32.0) for n in range(12)]
    assert all(c.sum() > 20 for c in covs)
    assert np.array_equal(covs[3], coverage(f"{RANDOM_PREFIX}3", 22.0, 32.0, 32.0))
    ious = [np.minimum(a, b).sum() / np.maximum(a, b).sum() for i, a in enumerate(covs) for b in covs[i + 1:]]
    assert max(ious) < 0.97


def _single_rows(opt: RowOptions, n: int = 60) -> list[tuple[object, str, tuple]]:
    sp = make_split("adapter", n, start=0, images=True)
    out = []
    for i in range(n):
        if sp.specs[i].kind != "single":
            continue
        r = make_row(sp.captions[i], sp.specs[i], sp.images[i], 500 + i, opt)
        if r is not None:
            out.append((sp.specs[i], sp.captions[i], r))
    return out


def test_concept_rows_hide_the_shape_word_and_copy_the_neighbours_place() -> None:
    rows = _single_rows(RowOptions(frac_concept=1.0, frac_dropout=0.0, frac_random=0.5, copy_layout=True))
    assert len(rows) >= 8
    vocab_shapes = set(SHAPES) | set(SET_A)
    for spec, original, (cap, kind, target, nb, nb_cap) in rows:
        assert kind == "concept" and nb is not None
        words = set(cap.split())
        assert not words & vocab_shapes, cap  # the shape is named by a made-up word
        new = words - set(original.split())
        assert len(new) == 1, (original, cap)
        assert new <= set(nb_cap.split()), (cap, nb_cap)  # the neighbour's caption uses the same word
        colour = spec.objects[0].colour
        nb_col = next(c for c in COLOURS if _has(nb, c))
        tx, ty = _centre(target, colour)
        nx, ny = _centre(nb, nb_col)
        assert abs(tx - nx) < 3 and abs(ty - ny) < 3, (cap, (tx, ty), (nx, ny))


def test_without_copy_layout_the_target_keeps_the_samples_place() -> None:
    rows = _single_rows(RowOptions(frac_concept=1.0, frac_dropout=0.0, copy_layout=False))
    sp = make_split("adapter", 60, start=0, images=True)
    by_caption = dict(zip(sp.captions, sp.images, strict=True))
    moved = 0
    for spec, original, (_, _, target, _, _) in rows:
        colour = spec.objects[0].colour
        sx, sy = _centre(by_caption[original], colour)
        tx, ty = _centre(target, colour)
        moved += abs(tx - sx) > 3 or abs(ty - sy) > 3
    assert moved <= len(rows) // 4


def _has(img: np.ndarray, colour: str) -> bool:
    d = np.abs(img.astype(float) - np.asarray(COLOURS[colour], dtype=float)).sum(-1)
    return int((d < 40).sum()) > 5
