"""Pillow drawings of shapes the toy world does not have (rings, stars), with captions in
the toy grammar: what a user would ingest to teach the service a new shape."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

BACKGROUNDS = {"plain": (0, 0, 0), "gray": (80, 80, 80), "navy": (10, 15, 75)}
COLOURS = {"pink": (255, 105, 180), "red": (225, 25, 25), "blue": (40, 80, 245),
           "green": (30, 185, 45), "yellow": (245, 235, 35)}


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [(cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
             cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]


def draw(shape: str, colour: str, size: str, bg: str, rng: random.Random, px: int = 64) -> Image.Image:
    img = Image.new("RGB", (px, px), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    r = rng.uniform(6, 8) if size == "small" else rng.uniform(11, 14)
    cx, cy = rng.uniform(r + 3, px - r - 3), rng.uniform(r + 3, px - r - 3)
    rgb = COLOURS[colour]
    if shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=rgb, width=max(2, int(r / 3)))
    elif shape == "star":
        d.polygon(_star(cx, cy, r), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def caption(shape: str, colour: str, size: str, bg: str) -> str:
    text = f"a {size} {colour} {shape}"
    if bg != "plain":
        text += f" on a {bg} background"
    return text


def write_set(out: Path, shape: str, colours: list[str], n: int, seed: int = 0) -> Path:
    """``n`` images of ``shape`` cycling over ``colours``, sizes and backgrounds; returns
    the captions.jsonl path (rows {"file", "caption"})."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour, size = colours[i % len(colours)], ("big", "small")[i // len(colours) % 2]
        bg = ("plain", "plain", "gray", "navy")[i % 4]
        name = f"{shape}{i:02d}.png"
        draw(shape, colour, size, bg, rng).save(out / name)
        rows.append({"file": name, "caption": caption(shape, colour, size, bg)})
    path = out / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
