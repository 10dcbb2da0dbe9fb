"""The generator: deterministic, well-formed 64x64 images, layouts that match the spec."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from toyworld.render import render
from toyworld.scene import ObjectSpec, Scene, SceneSpec, layout, sample_scene
from toyworld.splits import train_example
from toyworld.vocab import BACKGROUNDS, COLOURS, IMAGE_SIZE, _check_palettes


def test_render_is_pure_and_seeded_sampling_is_reproducible() -> None:
    a = sample_scene(np.random.default_rng(7))
    b = sample_scene(np.random.default_rng(7))
    assert a == b
    img1, img2 = render(a), render(a)
    assert img1.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and img1.dtype == np.uint8
    assert np.array_equal(img1, img2)
    assert not np.array_equal(img1, render(sample_scene(np.random.default_rng(8))))


def test_golden_first_training_image() -> None:
    """Catches silent drift of the generator (data already written would no longer match)."""
    ex = train_example(0, seed=0)
    digest = hashlib.sha256(render(ex.scene).tobytes()).hexdigest()[:16]
    assert (ex.caption, digest) == GOLDEN


GOLDEN = (
    "a picture of one big green cross to the left of one small red diamond on a gray background",
    "8e7e5aea664c7b3d",
)


def test_scene_json_round_trip() -> None:
    for i in range(20):
        s = sample_scene(np.random.default_rng(i))
        assert Scene.from_dict(s.to_dict()) == s


def test_objects_stay_inside_and_border_shows_background() -> None:
    for i in range(120):
        s = sample_scene(np.random.default_rng(i))
        img = render(s)
        bg = np.asarray(BACKGROUNDS[s.spec.background or ""])
        ring = np.concatenate(
            [
                img[:2].reshape(-1, 3),
                img[-2:].reshape(-1, 3),
                img[:, :2].reshape(-1, 3),
                img[:, -2:].reshape(-1, 3),
            ]
        )
        assert (ring == bg).all(), f"scene {i} touches the border: {s}"
        n_expected = s.spec.count if s.spec.kind != "relation" else 2
        assert len(s.placed) == n_expected


def test_relation_layout_puts_subject_on_the_right_side() -> None:
    rng = np.random.default_rng(0)
    for rel in ("left of", "right of", "above", "below"):
        spec = SceneSpec(
            kind="relation",
            objects=(ObjectSpec("circle", "red", "big"), ObjectSpec("square", "blue", "small")),
            relation=rel,
            background="gray",
        )
        for _ in range(20):
            a, b = layout(spec, rng).placed
            dx, dy = a.x - b.x, a.y - b.y
            horizontal = rel in ("left of", "right of")
            main, other = (dx, dy) if horizontal else (dy, dx)
            assert abs(main) > 2 * abs(other)
            assert (main < 0) == (rel in ("left of", "above"))


def test_colours_are_drawn_exactly_and_backgrounds_never_collide() -> None:
    _check_palettes()
    spec = SceneSpec(
        kind="single", objects=(ObjectSpec("square", "orange", "big"),), background="navy"
    )
    img = render(layout(spec, np.random.default_rng(0)))
    colours = {tuple(int(v) for v in px) for px in img.reshape(-1, 3)}
    assert COLOURS["orange"] in colours and BACKGROUNDS["navy"] in colours


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"kind": "single", "objects": (ObjectSpec("circle", "red"),), "count": 2}, "count 1"),
        ({"kind": "group", "objects": (ObjectSpec("circle", "red"),), "count": 4}, "count 2 or 3"),
        (
            {
                "kind": "relation",
                "objects": (ObjectSpec("circle", "red"), ObjectSpec("circle", "blue")),
                "relation": "above",
            },
            "differ in shape",
        ),
    ],
)
def test_invalid_specs_fail_early_with_the_value(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        SceneSpec(**kwargs)
    with pytest.raises(ValueError, match="hexagon"):
        ObjectSpec("hexagon", "red")
