"""Pure rendering of a ``Scene`` to a (64, 64, 3) uint8 image, and image degradations.

Shapes are rasterised on a x4 supersampled grid and box-averaged down, so edges are
anti-aliased like a real (slightly soft) image. ``render`` uses no randomness: the
same ``Scene`` always gives the same bytes. ``degrade`` (blur, noise, colour drift)
imitates imperfect generations for the checker's robustness report.
"""

from __future__ import annotations

import numpy as np

from toyworld.scene import Scene
from toyworld.vocab import BACKGROUNDS, COLOURS, IMAGE_SIZE

SUPERSAMPLE = 4
CROSS_HALF_WIDTH = 1.0 / 3.0
"""Half width of a cross arm, as a fraction of the half extent (arm width = extent / 3)."""


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in normalised coordinates: the shape fills the box [-1, 1]^2.

    ``u`` grows to the right, ``v`` grows downwards (image rows). Triangles point up.
    Returns a boolean array shaped like ``u``.
    """
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (au <= 1.0) & (av <= 1.0)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "triangle":
        return (av <= 1.0) & (au <= (v + 1.0) / 2.0)
    if shape == "cross":
        t = CROSS_HALF_WIDTH
        return ((au <= t) & (av <= 1.0)) | ((av <= t) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _supersampled_grid(size: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centre coordinates (x, y), each (size*factor, size*factor), in pixels."""
    c = (np.arange(size * factor, dtype=np.float64) + 0.5) / factor
    return np.meshgrid(c, c, indexing="xy")


_GRID: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The (read-only) sub-pixel grid, built once per process."""
    key = (size, factor)
    if key not in _GRID:
        xs, ys = _supersampled_grid(size, factor)
        xs.flags.writeable = ys.flags.writeable = False
        _GRID[key] = (xs, ys)
    return _GRID[key]


def _span(centre: float, half: float, factor: int, n: int) -> slice:
    """Sub-pixel indices whose centres can lie within ``half`` of ``centre`` (a margin of
    one sub-pixel each side, so the inside-test, not this bound, decides every edge)."""
    lo = int(np.floor((centre - half) * factor - 0.5)) - 1
    hi = int(np.ceil((centre + half) * factor - 0.5)) + 2
    return slice(max(0, lo), min(n, hi))


def _box_sum(canvas: np.ndarray, f: int) -> np.ndarray:
    """(n, n, 3) -> (n/f, n/f, 3) sums of f x f boxes, as f contiguous adds per axis
    (a strided ``sum(axis=(1, 3))`` is ~10x slower)."""
    n = canvas.shape[0]
    rows = canvas.reshape(n // f, f, n * 3)
    acc = rows[:, 0].copy()
    for i in range(1, f):
        acc += rows[:, i]
    cols = acc.reshape(n // f, n // f, f, 3)
    out = cols[:, :, 0].copy()
    for i in range(1, f):
        out += cols[:, :, i]
    return out


def render(scene: Scene) -> np.ndarray:
    """Render a scene. Returns (IMAGE_SIZE, IMAGE_SIZE, 3) uint8, RGB.

    Each shape is tested only on the sub-pixels of its bounding box (every shape lies in
    its box [-1, 1]^2, so the bytes equal a test over the whole grid; ~10x faster, which
    is what makes the first-start database build fit its time budget).
    """
    n = IMAGE_SIZE * SUPERSAMPLE
    xs, ys = _grid(IMAGE_SIZE, SUPERSAMPLE)
    bg = scene.spec.background
    assert bg is not None
    # Colours are integers, so an integer canvas and an integer box sum give exactly the
    # float64 mean of the sub-pixels (sum / 16 is exact) at a fraction of the cost.
    canvas = np.tile(np.asarray(BACKGROUNDS[bg], dtype=np.int16), (n, n, 1))  # 16 * 255 fits
    for p in scene.placed:
        r = p.extent / 2.0
        rows, cols = _span(p.y, r, SUPERSAMPLE, n), _span(p.x, r, SUPERSAMPLE, n)
        u = (xs[rows, cols] - p.x) / r
        v = (ys[rows, cols] - p.y) / r
        canvas[rows, cols][shape_mask(p.shape, u, v)] = COLOURS[p.colour]
    small = _box_sum(canvas, SUPERSAMPLE) / float(SUPERSAMPLE * SUPERSAMPLE)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding. image (H, W, C) -> float64 (H, W, C)."""
    img = image.astype(np.float64)
    if sigma <= 0:
        return img
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    img = sum(k[i] * pad[i : i + img.shape[0]] for i in range(len(k)))
    pad = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    img = sum(k[i] * pad[:, i : i + img.shape[1]] for i in range(len(k)))
    return np.asarray(img)


def degrade(
    image: np.ndarray,
    rng: np.random.Generator,
    blur_sigma: float = 1.0,
    noise_std: float = 10.0,
    colour_shift: float = 15.0,
) -> np.ndarray:
    """Imitate an imperfect generation: Gaussian blur, one global RGB shift drawn from
    U(-colour_shift, colour_shift) per channel, then i.i.d. Gaussian pixel noise.

    image: (H, W, 3) uint8. Returns (H, W, 3) uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    out = gaussian_blur(image, blur_sigma)
    out = out + rng.uniform(-colour_shift, colour_shift, size=(1, 1, 3))
    out = out + rng.normal(0.0, noise_std, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def noise_image(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Uniform i.i.d. RGB noise, (size, size, 3) uint8: an image that shows nothing."""
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
