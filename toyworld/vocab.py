"""The toy world's closed vocabulary and its exact colours.

Everything that a caption can name and the checker can detect lives here, so the
renderer, the grammar, the parser and the checker agree by construction.

Image format: 64x64 RGB uint8 (``IMAGE_SIZE``). 64 px is the smallest square where
a "small" shape (10-13 px across) still shows its corners after the x4
supersampled anti-aliasing, and it keeps the small VAE/UNet family cheap.

Colours are RGB tuples in 0..255. The shape palette is saturated and bright; the
background palette is dark and desaturated, so no background is ever nearer to a
shape colour than ``MIN_BG_SHAPE_DISTANCE`` (checked by ``_check_palettes``).
"""

from __future__ import annotations

from typing import Final

IMAGE_SIZE: Final[int] = 64
"""Side of every image, in pixels (images are (64, 64, 3) uint8)."""

SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle", "diamond", "cross")

SHAPE_PLURALS: Final[dict[str, str]] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}

COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (225, 25, 25),
    "green": (30, 185, 45),
    "blue": (40, 80, 245),
    "yellow": (245, 235, 35),
    "purple": (155, 45, 215),
    "orange": (255, 135, 0),
    "white": (245, 245, 245),
    "cyan": (30, 225, 235),
}

BACKGROUNDS: Final[dict[str, tuple[int, int, int]]] = {
    "black": (0, 0, 0),
    "gray": (80, 80, 80),
    "brown": (85, 50, 20),
    "navy": (10, 15, 75),
}
"""Background colours. "black" is the plain background (captions may call it "plain")."""

PLAIN_BACKGROUND: Final[str] = "black"

SIZES: Final[dict[str, tuple[int, int]]] = {"small": (10, 13), "big": (20, 23)}
"""Inclusive range of the bounding-box side (px) of each size class at 64x64."""

SIZE_THRESHOLD_PX: Final[float] = 16.5
"""Bounding-box side that separates small from big (midway between the ranges)."""

COUNT_WORDS: Final[dict[int, str]] = {1: "one", 2: "two", 3: "three"}
WORD_COUNTS: Final[dict[str, int]] = {w: n for n, w in COUNT_WORDS.items()}

RELATIONS: Final[tuple[str, ...]] = ("left of", "right of", "above", "below")

MIN_BG_SHAPE_DISTANCE: Final[float] = 100.0


def colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Euclidean distance between two RGB colours (0..441)."""
    return float(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)


def _check_palettes() -> None:
    """Raise if a background colour sits too close to a shape colour (called by tests)."""
    for bg_name, bg in BACKGROUNDS.items():
        for name, rgb in COLOURS.items():
            d = colour_distance(bg, rgb)
            if d < MIN_BG_SHAPE_DISTANCE:
                raise ValueError(
                    f"background {bg_name}={bg} is {d:.0f} from shape colour {name}={rgb};"
                    f" need >= {MIN_BG_SHAPE_DISTANCE}"
                )
