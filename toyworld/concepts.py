"""Held-out concepts: shapes no training prompt names, their renderers, pairs and a detector.

Two sets, both drawn in the toy world's colours on its backgrounds:

* set ``A`` (ring, star, heart, bar) is rasterised like the toy renderer (x4 supersampled
  inside-tests, box-averaged) at the toy sizes (10-13 px small, 20-23 px big). Its images
  may be used to train and tune a model; its *names* never appear in a training caption
  (training rows hide a shape behind a made-up word, ``pseudo_word``).
* set ``B`` (arrow, moon, bowtie) is drawn by another renderer (Pillow ``ImageDraw``
  polygons and ellipses at x4, Lanczos-downsampled) at other sizes (14-28 px) and anywhere
  on the canvas; nothing that trains or tunes a model ever sees it: it is for the final table.

A caption names a concept in the toy grammar ("a red ring", "a big blue arrow on a navy
background"); ``concept_pairs`` makes ingestible (image, caption) pairs.

The detector (``concept_blobs`` / ``drawn``) reuses the checker's colour unmixing and
components (``toyworld.detect``) and judges each blob's shape by soft IoU of its silhouette,
cut in a *square* box around the blob (so aspect survives: a bar is not a square), against a
template bank of every known and held-out shape drawn by its own renderer at several sizes
and blurs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from toyworld.vocab import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    PLAIN_BACKGROUND,
    SHAPES,
    SIZE_THRESHOLD_PX,
)

SET_A: tuple[str, ...] = ("ring", "star", "heart", "bar")
SET_B: tuple[str, ...] = ("arrow", "moon", "bowtie")
CONCEPTS: dict[str, tuple[str, ...]] = {"A": SET_A, "B": SET_B}
ALL_SHAPES: tuple[str, ...] = (*SHAPES, *SET_A, *SET_B)
PLURALS: dict[str, str] = {"ring": "rings", "star": "stars", "heart": "hearts", "bar": "bars",
                           "arrow": "arrows", "moon": "moons", "bowtie": "bowties"}
B_EXTENTS = (14.0, 28.0)
"""Range of a set-B object's bounding-box side (px): other sizes than the toy world's."""
SQUARE_SIDE = 24
MIN_IOU = 0.55
"""Below this soft IoU with its best template a blob has no shape."""


# ---------------------------------------------------------------- set A: toy-style masks
def concept_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a set-A shape (or a known one) in the box [-1, 1]^2 (v grows down)."""
    from toyworld.render import shape_mask

    if shape in SHAPES:
        return shape_mask(shape, u, v)
    if shape.startswith(RANDOM_PREFIX):
        return random_shape_mask(int(shape[len(RANDOM_PREFIX):]), u, v)
    r2 = u * u + v * v
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.34)
    if shape == "star":
        ang = np.arctan2(u, -v)  # 0 at the top point
        k = np.cos(5 * ang / 2) ** 2  # 1 at the 5 points, 0 between them
        return np.sqrt(r2) <= 0.42 + 0.58 * k**3
    if shape == "heart":
        x, y = 1.1 * u, -1.15 * (v + 0.1)
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0.0
    raise ValueError(f"no toy-style mask for shape {shape!r}; set A is {SET_A}")


RANDOM_PREFIX = "random:"
"""Shape names ``random:<n>`` are the random silhouettes of ``random_shape_mask`` (training rows only)."""


def random_shape_mask(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of random silhouette ``n`` in [-1, 1]^2: a star-shaped region whose radius
    follows 3-9 random control points around the centre (piecewise linear: pointed, or smooth
    harmonics), minus, with p 0.3 each, a random disc (a bite) and a concentric hole. A generic
    family, so a model that learns to draw *whatever silhouette the neighbour shows* has many
    more than nine shapes to learn it from; it is never used for evaluation."""
    rng = np.random.default_rng([991, n])
    ang = np.arctan2(v, u)
    if rng.random() < 0.5:
        k = int(rng.integers(3, 10))
        th = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.45, 1.0, k)
        rad[rng.integers(k)] = 1.0
        r_edge = np.interp(np.mod(ang, 2 * np.pi), np.r_[th - 2 * np.pi, th, th + 2 * np.pi], np.tile(rad, 3))
    else:
        r_edge = np.ones_like(ang)
        for m in rng.choice(np.arange(1, 6), size=2, replace=False):
            r_edge = r_edge + rng.uniform(0.05, 0.3) * np.cos(m * ang + rng.uniform(0, 2 * np.pi))
        r_edge = r_edge / (1 + 0.6)
    sx, sy = rng.uniform(0.75, 1.0, 2)
    r = np.sqrt((u / sx) ** 2 + (v / sy) ** 2) * max(sx, sy)
    inside = r <= r_edge
    if rng.random() < 0.3:
        a = rng.uniform(0, 2 * np.pi)
        d, rb = rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.6)
        inside &= (u - d * np.cos(a)) ** 2 + (v - d * np.sin(a)) ** 2 > rb * rb
    if rng.random() < 0.3:
        inside &= r >= rng.uniform(0.3, 0.55) * r_edge
    return inside


def _toy_cover(shape: str, extent: float, side: int, cx: float, cy: float, ss: int = 4) -> np.ndarray:
    c = (np.arange(side * ss) + 0.5) / ss
    xs, ys = np.meshgrid(c, c, indexing="xy")
    m = concept_mask(shape, (xs - cx) / (extent / 2), (ys - cy) / (extent / 2))
    return m.reshape(side, ss, side, ss).mean(axis=(1, 3))


# ---------------------------------------------------------------- set B: Pillow drawings
def _pillow_cover(shape: str, extent: float, side: int, cx: float, cy: float, ss: int = 4) -> np.ndarray:
    from PIL import Image, ImageDraw

    n = side * ss
    im = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(im)
    r = extent * ss / 2
    x0, y0 = cx * ss, cy * ss

    def pts(rel: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x0 + a * r, y0 + b * r) for a, b in rel]

    if shape == "arrow":  # pointing right: a shaft and a head
        d.polygon(pts([(-1, -0.25), (0.1, -0.25), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.25), (-1, 0.25)]), fill=255)
    elif shape == "moon":  # a crescent opening to the right
        d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=255)
        d.ellipse([x0 - 0.35 * r, y0 - 0.9 * r, x0 + 1.45 * r, y0 + 0.9 * r], fill=0)
    elif shape == "bowtie":  # two triangles joined by a narrow waist
        d.polygon(pts([(-1, -0.8), (0, -0.2), (1, -0.8), (1, 0.8), (0, 0.2), (-1, 0.8)]), fill=255)
    else:
        raise ValueError(f"no Pillow drawing for shape {shape!r}; set B is {SET_B}")
    small = im.resize((side, side), Image.LANCZOS)
    return np.asarray(small, dtype=np.float64) / 255.0


def coverage(shape: str, extent: float, cx: float, cy: float, side: int = IMAGE_SIZE) -> np.ndarray:
    """(side, side) coverage in [0, 1] of ``shape`` centred at (cx, cy) px, box side ``extent``."""
    if shape in SET_B:
        return _pillow_cover(shape, extent, side, cx, cy)
    return _toy_cover(shape, extent, side, cx, cy)


@dataclass(frozen=True)
class Item:
    """One object to draw: shape, colour name, centre (px), box side (px)."""

    shape: str
    colour: str
    x: float
    y: float
    extent: float


def render_items(items: list[Item], background: str) -> np.ndarray:
    """(64, 64, 3) uint8: the items painted in order over the background."""
    img = np.tile(np.asarray(BACKGROUNDS[background], dtype=np.float64), (IMAGE_SIZE, IMAGE_SIZE, 1))
    for it in items:
        a = coverage(it.shape, it.extent, it.x, it.y)[:, :, None]
        img = img * (1 - a) + a * np.asarray(COLOURS[it.colour], dtype=np.float64)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- captions and pairs
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(shape: str, colour: str, size: str | None, background: str | None, frame: int = 0) -> str:
    """A toy-grammar caption naming one ``colour`` ``shape`` ("a big red ring on a navy background")."""
    adj = " ".join(w for w in (size, colour) if w)
    np_ = f"{article(adj)} {adj} {shape}"
    core = (np_, f"there is {np_}", f"a picture of {np_}")[frame % 3]
    if background:
        core += f" on a {'plain' if background == PLAIN_BACKGROUND else background} background"
    return core


def sample_item(shape: str, rng: np.random.Generator, colour: str | None = None) -> Item:
    """A random placement of ``shape``: set B anywhere at 14-28 px, others at the toy sizes."""
    colour = colour or str(rng.choice(list(COLOURS)))
    if shape in SET_B:
        e = float(rng.uniform(*B_EXTENTS))
        lo, hi = e / 2 + 1, IMAGE_SIZE - e / 2 - 1
    else:
        e = float(rng.uniform(10, 13) if rng.random() < 0.5 else rng.uniform(20, 23))
        lo, hi = e / 2 + 3, IMAGE_SIZE - e / 2 - 3
    return Item(shape, colour, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), e)


def concept_pairs(shape: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` ingestible pairs of one concept: images (n, 64, 64, 3) uint8 and captions; a pure
    function of (shape, n, seed), prefix-stable."""
    ims, caps = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, ALL_SHAPES.index(shape), i])
        it = sample_item(shape, rng)
        bg = str(rng.choice(list(BACKGROUNDS))) if rng.random() < 0.5 else PLAIN_BACKGROUND
        size = ("big" if it.extent >= SIZE_THRESHOLD_PX else "small") if rng.random() < 0.5 else None
        ims.append(render_items([it], bg))
        caps.append(caption_for(shape, it.colour, size, bg if rng.random() < 0.7 else None, int(rng.integers(3))))
    return np.stack(ims), caps


def concept_prompts(shape: str, n: int, seed: int) -> list[tuple[str, str, str | None]]:
    """``n`` eval prompts naming ``shape``: (prompt, colour, background or None)."""
    out = []
    cols = list(COLOURS)
    for i in range(n):
        rng = np.random.default_rng([seed, 7, ALL_SHAPES.index(shape), i])
        colour = cols[(i + int(rng.integers(len(cols)))) % len(cols)]
        bg = str(rng.choice(list(BACKGROUNDS))) if rng.random() < 0.5 else None
        out.append((caption_for(shape, colour, None, bg, int(rng.integers(3))), colour, bg))
    return out


_SYLL_C, _SYLL_V = "bdfgklmnprstvz", "aeiou"


def pseudo_word(rng: np.random.Generator) -> str:
    """A made-up word (2-3 consonant-vowel syllables) that names no shape, colour or grammar word."""
    banned = set(ALL_SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(BACKGROUNDS)
    while True:
        w = "".join(str(rng.choice(list(_SYLL_C))) + str(rng.choice(list(_SYLL_V)))
                    for _ in range(int(rng.integers(2, 4))))
        if w not in banned:
            return w


# ---------------------------------------------------------------- detector
def square_crop(soft: np.ndarray, mask: np.ndarray, side: int = SQUARE_SIDE) -> np.ndarray:
    """The soft coverage cut in a square box (the blob's longer side + 20 %) centred on the
    blob's box, resampled to (side, side)."""
    from toyworld.detect import bbox_of, resample_mask

    x0, y0, x1, y1 = bbox_of(mask)
    s = max(x1 - x0, y1 - y0)
    half = 0.6 * s + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    pad = int(np.ceil(half)) + 2
    p = np.pad(soft, pad)
    a, b = round(cy - half) + pad, round(cx - half) + pad
    w = round(2 * half)
    return resample_mask(p[a : a + w, b : b + w], side)


@lru_cache(maxsize=1)
def template_bank() -> tuple[np.ndarray, np.ndarray]:
    """(templates (N, side, side), shape index into ``ALL_SHAPES`` (N,)): every shape by its
    own renderer at 5 sizes x 4 blurs x 2 sub-pixel offsets."""
    from toyworld.render import gaussian_blur

    temps, index = [], []
    for k, shape in enumerate(ALL_SHAPES):
        for e in (10.0, 13.0, 17.0, 22.0, 28.0):
            for o in (0.0, 0.5):
                cover = coverage(shape, e, 20 + o, 20 + 0.5 * o, side=40)
                for sigma in (0.0, 0.8, 1.2, 1.6):
                    soft = gaussian_blur(cover[:, :, None], sigma)[:, :, 0]
                    temps.append(square_crop(soft, soft >= 0.5))
                    index.append(k)
    return np.stack(temps), np.asarray(index)


@dataclass(frozen=True)
class ConceptBlob:
    colour: str
    shape: str | None
    iou: float
    area: int


def concept_blobs(image: np.ndarray) -> tuple[str | None, list[ConceptBlob]]:
    """(background name or None, the image's blobs with a shape judged over ``ALL_SHAPES``)."""
    from toyworld.detect import (
        MIN_AREA,
        _dilate,
        background_name,
        connected_components,
        estimate_background,
        majority_filter,
        pixel_labels,
    )

    bg = estimate_background(image)
    raw, alpha = pixel_labels(image, bg)
    labels = majority_filter(raw)
    t, index = template_bank()
    out = []
    for k, colour in enumerate(COLOURS):
        for pix in connected_components(labels == k):
            if len(pix) < MIN_AREA:
                continue
            mask = np.zeros(labels.shape, dtype=bool)
            mask[pix[:, 0], pix[:, 1]] = True
            soft = np.clip(alpha[:, :, k], 0.0, 1.0) * _dilate(mask, 2)
            m = square_crop(soft, mask)
            iou = np.minimum(t, m).sum(axis=(1, 2)) / np.maximum(t, m).sum(axis=(1, 2))
            j = int(iou.argmax())
            shape = ALL_SHAPES[int(index[j])] if iou[j] >= MIN_IOU else None
            out.append(ConceptBlob(colour, shape, float(iou[j]), len(pix)))
    return background_name(bg), out


def drawn(image: np.ndarray, shape: str, colour: str) -> bool:
    """True when the image holds a blob of ``colour`` judged to be ``shape``."""
    _, blobs = concept_blobs(image)
    return any(b.colour == colour and b.shape == shape for b in blobs)
