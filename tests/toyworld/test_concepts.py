"""Held-out concepts: renderers, pairs, prompts and the detector that judges them."""

from __future__ import annotations

import numpy as np
import pytest

from toyworld import concepts as C
from toyworld.render import degrade


@pytest.mark.parametrize("shape", [*C.SET_A, *C.SET_B])
def test_detector_scores_clean_renders_of_each_concept(shape: str) -> None:
    ims, caps = C.concept_pairs(shape, 30, seed=3)
    items = [C.sample_item(shape, np.random.default_rng([3, C.ALL_SHAPES.index(shape), i])) for i in range(30)]
    right = [C.drawn(im, shape, it.colour) for im, it in zip(ims, items, strict=True)]
    assert np.mean(right) >= 0.95, (shape, np.mean(right))
    # the wrong shape and the wrong colour are rejected
    others = [s for s in C.ALL_SHAPES if s != shape]
    wrong = [C.drawn(im, others[i % len(others)], it.colour) for i, (im, it) in enumerate(zip(ims, items, strict=True))]
    assert np.mean(wrong) <= 0.05
    assert all(shape.split()[0] in c or C.PLURALS[shape] in c for c in caps)


def test_mild_blur_keeps_the_judgement() -> None:
    rng = np.random.default_rng(0)
    hits = []
    for shape in (*C.SET_A, *C.SET_B):
        ims, _ = C.concept_pairs(shape, 10, seed=5)
        for i, im in enumerate(ims):
            it = C.sample_item(shape, np.random.default_rng([5, C.ALL_SHAPES.index(shape), i]))
            hits.append(C.drawn(degrade(im, rng, blur_sigma=0.7, noise_std=4.0, colour_shift=6.0), shape, it.colour))
    assert np.mean(hits) >= 0.85


def test_known_shapes_are_not_taken_for_held_out_ones() -> None:
    rng = np.random.default_rng(1)
    for shape in ("circle", "square", "triangle", "diamond", "cross"):
        for _ in range(10):
            it = C.sample_item(shape, rng)
            _, blobs = C.concept_blobs(C.render_items([it], "black"))
            assert max(blobs, key=lambda b: b.area).shape == shape


def test_pairs_and_prompts_are_deterministic_and_name_no_training_word() -> None:
    a, ca = C.concept_pairs("moon", 5, 9)
    b, cb = C.concept_pairs("moon", 8, 9)
    assert np.array_equal(a, b[:5]) and ca == cb[:5]
    ps = C.concept_prompts("arrow", 6, 1)
    assert all("arrow" in p for p, _, _ in ps)
    rng = np.random.default_rng(0)
    words = {C.pseudo_word(rng) for _ in range(200)}
    assert not words & set(C.ALL_SHAPES)


def test_eval_cli_needs_prompts_or_concepts_and_checks_the_ns() -> None:
    import typer
    from typer.testing import CliRunner

    from toyworld import cli, cli_models

    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    cli.register(app, bench)
    cli_models.register(app, bench)
    res = CliRunner().invoke(app, ["toyworld", "eval"])
    assert res.exit_code == 2 and "--concepts" in res.output
    res = CliRunner().invoke(app, ["toyworld", "eval", "--concepts", "--concept-ns", "5,x"])
    assert res.exit_code == 2 and "comma list of integers" in res.output
