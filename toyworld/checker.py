"""TIFA-style fidelity checker for toy-world prompts.

``questions(prompt)`` parses the prompt and asks multiple-choice questions about what it
states (``object``, ``colour``, ``count``, ``relation``, ``size``; the background's colour
when it is named); ``answer(question, analysis)`` answers one from ``toyworld.detect``'s
analysis; ``score(image, prompt)`` is the fraction answered as the prompt expects, overall
and per category. An answer outside the choices ("none", "zero", "unknown": the thing asked
about is not there) is always wrong. ``chance_level`` is the expected score of a uniform
guess among the choices. The questions: docs/toyworld.md, "Fidelity checker".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from toyworld.detect import Analysis, Blob, analyse
from toyworld.parse import parse
from toyworld.scene import ObjectSpec, SceneSpec
from toyworld.vocab import (
    BACKGROUNDS,
    COLOURS,
    COUNT_WORDS,
    RELATIONS,
    SHAPE_PLURALS,
    SIZE_THRESHOLD_PX,
    SIZES,
)

CATEGORIES = ("object", "colour", "count", "relation", "size")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    ``query`` says what to look at: ("shape", s), ("background",) or
    ("relation", s1, c1, s2, c2); answering uses it, never the English ``text``.
    """

    category: str
    text: str
    choices: tuple[str, ...]
    expected: str
    query: tuple[str, ...]


@dataclass
class FidelityResult:
    """Score of one image against one prompt."""

    prompt: str
    score: float
    per_category: dict[str, float]
    answers: list[tuple[Question, str]] = field(default_factory=list)


def _object_questions(o: ObjectSpec, count: int | None) -> list[Question]:
    s = o.shape
    q = [
        Question("object", f"Is there a {s}?", ("yes", "no"), "yes", ("shape", s)),
        Question("colour", f"What colour is the {s}?", tuple(COLOURS), o.colour, ("shape", s)),
    ]
    if count is not None:
        q.append(
            Question(
                "count",
                f"How many {SHAPE_PLURALS[s]} are there?",
                tuple(COUNT_WORDS.values()),
                COUNT_WORDS[count],
                ("shape", s),
            )
        )
    if o.size is not None:
        q.append(Question("size", f"Is the {s} big or small?", tuple(SIZES), o.size, ("shape", s)))
    return q


def questions_for_spec(spec: SceneSpec) -> list[Question]:
    """The questions a spec implies (see the module docstring)."""
    qs: list[Question] = []
    if spec.kind == "relation":
        a, b = spec.objects
        qs += _object_questions(a, None) + _object_questions(b, None)
        assert spec.relation is not None
        qs.append(
            Question(
                "relation",
                f"Where is the {a.shape} relative to the {b.shape}?",
                RELATIONS,
                spec.relation,
                ("relation", a.shape, a.colour, b.shape, b.colour),
            )
        )
    else:
        qs += _object_questions(spec.objects[0], spec.count)
    if spec.background is not None:
        qs.append(
            Question(
                "colour",
                "What colour is the background?",
                tuple(BACKGROUNDS),
                spec.background,
                ("background",),
            )
        )
    return qs


def questions(prompt: str) -> list[Question]:
    """Questions for a prompt; raises ``PromptOutsideGrammar`` for foreign prompts."""
    return questions_for_spec(parse(prompt))


def _of_shape(a: Analysis, shape: str) -> list[Blob]:
    return [b for b in a.blobs if b.shape == shape]


def _pick(blobs: list[Blob], colour: str) -> Blob | None:
    """The largest blob of the asked colour, else the largest blob at all."""
    same = [b for b in blobs if b.colour == colour]
    pool = same or blobs
    return max(pool, key=lambda b: b.area) if pool else None


def answer(q: Question, a: Analysis) -> str:
    """Answer one question from an image analysis."""
    kind = q.query[0]
    if kind == "background":
        return a.background or "unknown"
    if kind == "relation":
        _, s1, c1, s2, c2 = q.query
        b1, b2 = _pick(_of_shape(a, s1), c1), _pick(_of_shape(a, s2), c2)
        if b1 is None or b2 is None:
            return "none"
        dx, dy = b1.cx - b2.cx, b1.cy - b2.cy
        if abs(dx) >= abs(dy):
            return "left of" if dx < 0 else "right of"
        return "above" if dy < 0 else "below"
    blobs = _of_shape(a, q.query[1])
    if q.category == "object":
        return "yes" if blobs else "no"
    if q.category == "count":
        n = len(blobs)
        return COUNT_WORDS.get(n, "zero" if n == 0 else "many")
    if not blobs:
        return "none"
    if q.category == "colour":
        votes = Counter(b.colour for b in blobs)
        top = max(votes.values())
        return max((b for b in blobs if votes[b.colour] == top), key=lambda b: b.area).colour
    if q.category == "size":
        return (
            "big" if float(np.median([b.extent for b in blobs])) >= SIZE_THRESHOLD_PX else "small"
        )
    raise ValueError(f"cannot answer question category {q.category!r}")


def score_analysis(prompt: str, qs: list[Question], a: Analysis) -> FidelityResult:
    """Score precomputed questions against a precomputed analysis."""
    answers = [(q, answer(q, a)) for q in qs]
    per: dict[str, list[bool]] = {}
    for q, got in answers:
        per.setdefault(q.category, []).append(got == q.expected)
    right = [ok for oks in per.values() for ok in oks]
    return FidelityResult(
        prompt=prompt,
        score=sum(right) / len(right),
        per_category={c: sum(v) / len(v) for c, v in per.items()},
        answers=answers,
    )


def score(image: np.ndarray, prompt: str) -> FidelityResult:
    """Fidelity of one (H, W, 3) uint8 image to one prompt, in [0, 1]."""
    return score_analysis(prompt, questions(prompt), analyse(image))


def chance_level(qs: list[Question]) -> float:
    """Expected score of answering every question uniformly at random among its choices."""
    if not qs:
        raise ValueError("no questions")
    return float(np.mean([1.0 / len(q.choices) for q in qs]))
