"""Caption grammar: turns a ``SceneSpec`` into natural English, several ways.

A caption is ``FRAME(CONTENT) [BACKGROUND]`` where

* CONTENT is a noun phrase (single/group scenes) or ``NP REL NP`` (relation scenes,
  optionally with a copula: "a red circle is left of a green square");
* a noun phrase has a determiner ("a"/"an"/"one"/"two"/"three"), an optional size
  and the colour, in one of three styles: ``adj`` "a big red circle",
  ``that`` "a big circle that is red", ``coloured`` "a big red coloured circle";
* FRAME is ``bare`` "X", ``there`` "there is/are X", ``picture`` "a picture of X"
  or ``showing`` "an image showing X";
* BACKGROUND is ``on`` "on a gray background", ``plain`` "on a plain background"
  (black only) or ``against`` "against a navy background".

Held-out phrasings (never in training or retrieval captions, only in eval prompts):
noun-phrase style ``coloured``, frame ``showing``, relation word "beneath" and
background style ``against`` (``HELD_OUT``). ``toyworld.parse.parse`` inverts every
phrasing this module can produce.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from toyworld.scene import ObjectSpec, SceneSpec
from toyworld.vocab import COUNT_WORDS, PLAIN_BACKGROUND, SHAPE_PLURALS

NP_STYLES = ("adj", "that", "coloured")
FRAMES = ("bare", "there", "picture", "showing")
BG_STYLES = ("on", "plain", "against")
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
HELD_OUT = {
    "np_style": "coloured",
    "frame": "showing",
    "rel_word": "beneath",
    "bg_style": "against",
}

MENTION_SIZE_P = 0.6
MENTION_COLOURED_BG_P = 0.7
MENTION_PLAIN_BG_P = 0.2


@dataclass(frozen=True)
class Phrasing:
    """How to word a spec. ``rel_word``/``bg_style`` are None when not applicable."""

    np_style: str = "adj"
    numeral_one: bool = False
    frame: str = "bare"
    copula: bool = False
    rel_word: str | None = None
    bg_style: str | None = None

    def is_held_out(self) -> bool:
        """True if any part of this phrasing is reserved for evaluation."""
        return (
            self.np_style == HELD_OUT["np_style"]
            or self.frame == HELD_OUT["frame"]
            or self.rel_word == HELD_OUT["rel_word"]
            or self.bg_style == HELD_OUT["bg_style"]
        )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(obj: ObjectSpec, count: int, style: str, numeral_one: bool) -> str:
    """E.g. ("red", "circle", big), 1, "that" -> "a big circle that is red"."""
    if style not in NP_STYLES:
        raise ValueError(f"unknown noun-phrase style {style!r}; expected one of {NP_STYLES}")
    noun = obj.shape if count == 1 else SHAPE_PLURALS[obj.shape]
    size = f"{obj.size} " if obj.size is not None else ""
    if style == "that":
        body = f"{size}{noun} that {'is' if count == 1 else 'are'} {obj.colour}"
    elif style == "coloured":
        body = f"{size}{obj.colour} coloured {noun}"
    else:
        body = f"{size}{obj.colour} {noun}"
    if count == 1 and not numeral_one:
        det = _article(body)
    else:
        det = COUNT_WORDS[count]
    return f"{det} {body}"


def caption(spec: SceneSpec, ph: Phrasing) -> str:
    """Word a (possibly partial) spec. Fields that are None are simply not mentioned."""
    if spec.kind == "relation":
        if ph.rel_word is None or ph.rel_word not in RELATION_WORDS[str(spec.relation)]:
            raise ValueError(f"relation word {ph.rel_word!r} does not express {spec.relation!r}")
        a = noun_phrase(spec.objects[0], 1, ph.np_style, ph.numeral_one)
        b = noun_phrase(spec.objects[1], 1, ph.np_style, ph.numeral_one)
        cop = "is " if ph.copula and ph.frame == "bare" else ""
        content = f"{a} {cop}{ph.rel_word} {b}"
        plural = False
    else:
        content = noun_phrase(spec.objects[0], spec.count, ph.np_style, ph.numeral_one)
        plural = spec.count > 1
    if ph.frame == "there":
        text = f"there {'are' if plural else 'is'} {content}"
    elif ph.frame == "picture":
        text = f"a picture of {content}"
    elif ph.frame == "showing":
        text = f"an image showing {content}"
    elif ph.frame == "bare":
        text = content
    else:
        raise ValueError(f"unknown frame {ph.frame!r}; expected one of {FRAMES}")
    if spec.background is not None:
        style = ph.bg_style or "on"
        if style == "plain" and spec.background != PLAIN_BACKGROUND:
            style = "on"
        if style == "plain":
            text += " on a plain background"
        else:
            word = "on" if style == "on" else "against"
            text += f" {word} {_article(spec.background)} {spec.background} background"
    return text


def mention(full: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Choose which optional fields a caption mentions: sizes with p=0.6 (one draw per
    scene), a coloured background with p=0.7, the plain background with p=0.2."""
    keep_size = rng.random() < MENTION_SIZE_P
    objs = tuple(o if keep_size else replace(o, size=None) for o in full.objects)
    p_bg = MENTION_PLAIN_BG_P if full.background == PLAIN_BACKGROUND else MENTION_COLOURED_BG_P
    bg = full.background if rng.random() < p_bg else None
    return replace(full, objects=objs, background=bg)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def sample_phrasing(spec: SceneSpec, rng: np.random.Generator, held_out: bool) -> Phrasing:
    """A random phrasing for ``spec``; held_out=False never uses a held-out part,
    held_out=True always uses at least one (rejection sampling over all parts)."""
    while True:
        styles = NP_STYLES if held_out else tuple(s for s in NP_STYLES if s != HELD_OUT["np_style"])
        frames = FRAMES if held_out else tuple(f for f in FRAMES if f != HELD_OUT["frame"])
        rel_word = None
        if spec.relation is not None:
            words = RELATION_WORDS[spec.relation]
            if not held_out:
                words = tuple(w for w in words if w != HELD_OUT["rel_word"])
            rel_word = _pick(rng, words)
        bg_style = None
        if spec.background is not None:
            bgs = (
                BG_STYLES if held_out else tuple(b for b in BG_STYLES if b != HELD_OUT["bg_style"])
            )
            bg_style = _pick(rng, bgs)
        ph = Phrasing(
            np_style=_pick(rng, styles),
            numeral_one=bool(rng.random() < 0.3),
            frame=_pick(rng, frames),
            copula=bool(rng.random() < 0.3),
            rel_word=rel_word,
            bg_style=bg_style,
        )
        if ph.is_held_out() == held_out:
            return ph


def describe(
    full: SceneSpec, rng: np.random.Generator, held_out: bool = False
) -> tuple[str, SceneSpec]:
    """A random caption of a complete spec and the (partial) spec it states."""
    said = mention(full, rng)
    return caption(said, sample_phrasing(said, rng, held_out)), said
