"""Scene descriptions: what a caption says (``SceneSpec``) and what an image shows (``Scene``).

A ``SceneSpec`` is the structured meaning of a caption. Size and background may be
``None`` (the caption did not say); shape and colour are always given. A ``Scene``
is a fully specified spec plus a layout (pixel centres and extents), which is all
``toyworld.render.render`` needs: rendering is a pure function of the ``Scene``.

Three kinds of scene:

* ``single``   -- one object ("a big red circle"), ``count == 1``;
* ``group``    -- ``count`` (2 or 3) identical objects ("two green triangles");
* ``relation`` -- two single objects of different shapes in a spatial relation
  ("a purple diamond above an orange cross").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from toyworld.vocab import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    PLAIN_BACKGROUND,
    RELATIONS,
    SHAPES,
    SIZES,
)

SceneKind = Literal["single", "group", "relation"]

MARGIN_PX = 3
"""Free border around every object, so the image border shows the background."""
GAP_PX = 4
"""Minimum free gap between the bounding boxes of two objects."""


@dataclass(frozen=True)
class ObjectSpec:
    """One (kind of) object as a caption names it. ``size`` is None when unspecified."""

    shape: str
    colour: str
    size: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")


@dataclass(frozen=True)
class SceneSpec:
    """Structured meaning of a caption.

    ``objects`` has one entry for single/group scenes and two for relation scenes
    (``objects[0]`` is the subject: "objects[0] <relation> objects[1]").
    """

    kind: SceneKind
    objects: tuple[ObjectSpec, ...]
    count: int = 1
    relation: str | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        n_obj = 2 if self.kind == "relation" else 1
        if self.kind not in ("single", "group", "relation"):
            raise ValueError(f"unknown scene kind {self.kind!r}")
        if len(self.objects) != n_obj:
            raise ValueError(f"{self.kind} scene needs {n_obj} objects, got {len(self.objects)}")
        if self.kind == "group" and self.count not in (2, 3):
            raise ValueError(f"group scene needs count 2 or 3, got {self.count}")
        if self.kind != "group" and self.count != 1:
            raise ValueError(f"{self.kind} scene needs count 1, got {self.count}")
        if (self.kind == "relation") != (self.relation is not None):
            raise ValueError(f"relation {self.relation!r} does not fit scene kind {self.kind!r}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; expected one of {RELATIONS}")
        if self.kind == "relation" and self.objects[0].shape == self.objects[1].shape:
            raise ValueError(
                f"relation objects must differ in shape, got two {self.objects[0].shape}s"
            )
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(
                f"unknown background {self.background!r}; expected one of {tuple(BACKGROUNDS)}"
            )

    def is_complete(self) -> bool:
        """True when every size and the background are specified."""
        return self.background is not None and all(o.size is not None for o in self.objects)

    def agrees_with(self, full: SceneSpec) -> bool:
        """True when every field this spec states equals the field of ``full``."""
        if (self.kind, self.count, self.relation) != (full.kind, full.count, full.relation):
            return False
        if self.background is not None and self.background != full.background:
            return False
        for mine, theirs in zip(self.objects, full.objects, strict=True):
            if (mine.shape, mine.colour) != (theirs.shape, theirs.colour):
                return False
            if mine.size is not None and mine.size != theirs.size:
                return False
        return True

    def colour_shape_pairs(self) -> tuple[tuple[str, str], ...]:
        """(colour, shape) of every object named, e.g. (("red", "circle"),)."""
        return tuple((o.colour, o.shape) for o in self.objects)


@dataclass(frozen=True)
class Placed:
    """An object on the canvas: centre (x, y) in pixels and bounding-box side ``extent``."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    extent: float


@dataclass(frozen=True)
class Scene:
    """A complete spec plus its layout; ``render(scene)`` depends on nothing else."""

    spec: SceneSpec
    placed: tuple[Placed, ...]

    def __post_init__(self) -> None:
        if not self.spec.is_complete():
            raise ValueError(f"Scene needs a complete spec (sizes and background), got {self.spec}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (round-trips through ``Scene.from_dict``)."""
        return {"spec": asdict(self.spec), "placed": [asdict(p) for p in self.placed]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Scene:
        s = d["spec"]
        spec = SceneSpec(
            kind=s["kind"],
            objects=tuple(ObjectSpec(**o) for o in s["objects"]),
            count=s["count"],
            relation=s["relation"],
            background=s["background"],
        )
        return Scene(spec=spec, placed=tuple(Placed(**p) for p in d["placed"]))


def complete_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Fill unspecified sizes and background at random (group objects share one size)."""
    objs = tuple(
        o if o.size is not None else replace(o, size=str(rng.choice(list(SIZES))))
        for o in spec.objects
    )
    bg = spec.background if spec.background is not None else _sample_background(rng)
    return replace(spec, objects=objs, background=bg)


def _sample_background(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return PLAIN_BACKGROUND
    others = [b for b in BACKGROUNDS if b != PLAIN_BACKGROUND]
    return str(others[int(rng.integers(len(others)))])


def sample_spec(rng: np.random.Generator) -> SceneSpec:
    """A complete random spec: kinds single/group/relation with p = 0.35/0.30/0.35."""
    u = rng.random()

    def obj(exclude_shape: str | None = None) -> ObjectSpec:
        shapes = [s for s in SHAPES if s != exclude_shape]
        return ObjectSpec(
            shape=str(shapes[int(rng.integers(len(shapes)))]),
            colour=str(list(COLOURS)[int(rng.integers(len(COLOURS)))]),
            size=str(list(SIZES)[int(rng.integers(len(SIZES)))]),
        )

    bg = _sample_background(rng)
    if u < 0.35:
        return SceneSpec(kind="single", objects=(obj(),), background=bg)
    if u < 0.65:
        return SceneSpec(
            kind="group", objects=(obj(),), count=int(rng.integers(2, 4)), background=bg
        )
    a = obj()
    b = obj(exclude_shape=a.shape)
    rel = str(RELATIONS[int(rng.integers(len(RELATIONS)))])
    return SceneSpec(kind="relation", objects=(a, b), relation=rel, background=bg)


def _extent(size: str, rng: np.random.Generator) -> float:
    lo, hi = SIZES[size]
    return float(rng.integers(lo, hi + 1))


def _fits(x: float, y: float, e: float) -> bool:
    lo = MARGIN_PX + e / 2
    hi = IMAGE_SIZE - MARGIN_PX - e / 2
    return lo <= x <= hi and lo <= y <= hi


def _apart(a: Placed, b: Placed) -> bool:
    need = (a.extent + b.extent) / 2 + GAP_PX
    return abs(a.x - b.x) >= need or abs(a.y - b.y) >= need


def layout(spec: SceneSpec, rng: np.random.Generator, max_tries: int = 2000) -> Scene:
    """Place the objects of a spec (unspecified fields are sampled first).

    Groups: ``count`` copies of one object with one extent, boxes at least ``GAP_PX``
    apart. Relations: the centre offset along the relation axis is at least the half
    extents plus 6 px and at least 2.5x the offset along the other axis, so the
    relation is unambiguous from the centroids.
    """
    spec = complete_spec(spec, rng)
    for _ in range(max_tries):
        placed = _try_layout(spec, rng)
        if placed is not None:
            return Scene(spec=spec, placed=placed)
    raise RuntimeError(f"could not lay out {spec} in {max_tries} tries")


def _uniform_centre(e: float, rng: np.random.Generator) -> float:
    lo = MARGIN_PX + e / 2
    hi = IMAGE_SIZE - MARGIN_PX - e / 2
    return float(rng.uniform(lo, hi))


def _centre_in_range(ea: float, eb: float, d: float, rng: np.random.Generator) -> float | None:
    """A coordinate for b such that b and b + d both keep their margins, or None."""
    lo = max(MARGIN_PX + eb / 2, MARGIN_PX + ea / 2 - d)
    hi = min(IMAGE_SIZE - MARGIN_PX - eb / 2, IMAGE_SIZE - MARGIN_PX - ea / 2 - d)
    if lo > hi:
        return None
    return float(rng.uniform(lo, hi))


def _try_layout(spec: SceneSpec, rng: np.random.Generator) -> tuple[Placed, ...] | None:
    if spec.kind in ("single", "group"):
        o = spec.objects[0]
        assert o.size is not None
        e = _extent(o.size, rng)
        out: list[Placed] = []
        for _ in range(spec.count):
            p = Placed(
                o.shape, o.colour, o.size, _uniform_centre(e, rng), _uniform_centre(e, rng), e
            )
            if not all(_apart(p, q) for q in out):
                return None
            out.append(p)
        return tuple(out)
    a, b = spec.objects
    assert a.size is not None and b.size is not None
    ea, eb = _extent(a.size, rng), _extent(b.size, rng)
    min_main = (ea + eb) / 2 + 6.0
    max_main = IMAGE_SIZE - 2 * MARGIN_PX - (ea + eb) / 2
    main = float(rng.uniform(min_main, max(max_main, min_main)))
    perp = float(rng.uniform(-1.0, 1.0)) * main / 2.5
    sign = -1.0 if spec.relation in ("left of", "above") else 1.0
    dx, dy = (
        (sign * main, perp) if spec.relation in ("left of", "right of") else (perp, sign * main)
    )
    # a's centre = b's centre + (dx, dy); draw b from the range where both fit.
    bx = _centre_in_range(ea, eb, dx, rng)
    by = _centre_in_range(ea, eb, dy, rng)
    if bx is None or by is None:
        return None
    ax, ay = bx + dx, by + dy
    pa = Placed(a.shape, a.colour, a.size, ax, ay, ea)
    pb = Placed(b.shape, b.colour, b.size, bx, by, eb)
    if not (_fits(ax, ay, ea) and _fits(bx, by, eb) and _apart(pa, pb)):
        return None
    return (pa, pb)


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random complete scene: ``layout(sample_spec(rng), rng)``."""
    return layout(sample_spec(rng), rng)
