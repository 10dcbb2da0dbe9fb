"""The bounding-box / integer renderer gives exactly the bytes of the plain full-grid one."""

from __future__ import annotations

import numpy as np

from toyworld.render import SUPERSAMPLE, _supersampled_grid, render, shape_mask
from toyworld.scene import Scene, sample_scene
from toyworld.vocab import BACKGROUNDS, COLOURS, IMAGE_SIZE


def _reference(scene: Scene) -> np.ndarray:
    """The original renderer: every shape tested on the whole float64 grid, then a mean."""
    n = IMAGE_SIZE * SUPERSAMPLE
    xs, ys = _supersampled_grid(IMAGE_SIZE, SUPERSAMPLE)
    canvas = np.empty((n, n, 3), dtype=np.float64)
    canvas[:] = np.asarray(BACKGROUNDS[str(scene.spec.background)], dtype=np.float64)
    for p in scene.placed:
        r = p.extent / 2.0
        mask = shape_mask(p.shape, (xs - p.x) / r, (ys - p.y) / r)
        canvas[mask] = np.asarray(COLOURS[p.colour], dtype=np.float64)
    small = canvas.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def test_fast_render_is_bit_identical_to_the_full_grid() -> None:
    for i in range(400):
        scene = sample_scene(np.random.default_rng([77, i]))
        assert np.array_equal(render(scene), _reference(scene)), i
