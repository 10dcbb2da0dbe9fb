"""How far the fidelity checker can be trusted: its accuracy on images whose truth is known.

For the first ``n`` eval-split examples (prompt + reference scene) it scores:

* ``clean``        the exact render of the prompt's scene (should be ~1.0);
* ``mild`` / ``moderate`` / ``heavy``  that render after ``toyworld.render.degrade``
  (blur, colour drift, pixel noise), imitating imperfect generations;
* ``mismatched``   a clean render of a *different* example's scene: a realistic image
  of the wrong thing, the practical floor a generator must beat;
* ``noise``        uniform RGB noise (shows nothing): must not score above chance.

``chance`` is the expected score of answering each question uniformly at random among
its choices. ``realism`` is the fraction of detected foreground components that are
clean palette-coloured shapes (one colour, a recognised shape).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from toyworld.checker import CATEGORIES, FidelityResult, chance_level, questions, score_analysis
from toyworld.detect import Analysis, analyse
from toyworld.render import degrade, noise_image, render
from toyworld.splits import eval_split

logger = logging.getLogger(__name__)

DEGRADATIONS: dict[str, dict[str, float]] = {
    "mild": {"blur_sigma": 0.7, "noise_std": 6.0, "colour_shift": 10.0},
    "moderate": {"blur_sigma": 1.0, "noise_std": 12.0, "colour_shift": 20.0},
    "heavy": {"blur_sigma": 1.4, "noise_std": 20.0, "colour_shift": 30.0},
}


@dataclass
class ConditionReport:
    """Checker results over ``n_images`` images of one condition."""

    score: float
    per_category: dict[str, float]
    perfect: float
    realism: float
    blobs_per_image: float
    n_images: int
    n_questions: int


def realism(analyses: list[Analysis]) -> float:
    """Fraction of foreground components, over all images, that are clean shapes (0 if none)."""
    fg = sum(a.foreground_components for a in analyses)
    return sum(a.clean_components for a in analyses) / fg if fg else 0.0


def summarise(results: list[FidelityResult], analyses: list[Analysis]) -> ConditionReport:
    """Aggregate per-image results: question-weighted score and per-category accuracy."""
    right: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for r in results:
        for q, got in r.answers:
            right[q.category].append(got == q.expected)
    every = [ok for oks in right.values() for ok in oks]
    return ConditionReport(
        score=float(np.mean(every)),
        per_category={c: float(np.mean(v)) for c, v in right.items() if v},
        perfect=float(np.mean([r.score == 1.0 for r in results])),
        realism=realism(analyses),
        blobs_per_image=float(np.mean([len(a.blobs) for a in analyses])),
        n_images=len(results),
        n_questions=len(every),
    )


def checker_report(n: int = 300, seed: int = 12345) -> dict[str, object]:
    """Run every condition on ``n`` eval-split examples (split seed ``seed``).

    Returns {"n", "seed", "chance", "conditions": {name: ConditionReport as dict}}.
    """
    if n < 2:
        raise ValueError(f"need n >= 2 examples for the mismatched condition, got {n}")
    examples = eval_split(n, seed)
    prompts = [ex.caption for ex in examples]
    qs = [questions(p) for p in prompts]
    clean = [render(ex.scene) for ex in examples]
    images: dict[str, list[np.ndarray]] = {"clean": clean}
    for name, kw in DEGRADATIONS.items():
        images[name] = [
            degrade(img, np.random.default_rng([seed, 7, i]), **kw) for i, img in enumerate(clean)
        ]
    images["mismatched"] = [clean[(i + 1) % n] for i in range(n)]
    images["noise"] = [noise_image(np.random.default_rng([seed, 9, i])) for i in range(n)]
    conditions: dict[str, dict[str, object]] = {}
    for name, imgs in images.items():
        analyses = [analyse(img) for img in imgs]
        results = [score_analysis(p, q, a) for p, q, a in zip(prompts, qs, analyses, strict=True)]
        conditions[name] = asdict(summarise(results, analyses))
        logger.info("checker report %s: score %.3f", name, conditions[name]["score"])
    all_q = [q for qq in qs for q in qq]
    return {"n": n, "seed": seed, "chance": chance_level(all_q), "conditions": conditions}


def format_table(report: dict[str, object]) -> str:
    """Markdown table of a ``checker_report`` result."""
    conds = report["conditions"]
    assert isinstance(conds, dict)
    head = (
        "| condition | score | " + " | ".join(CATEGORIES) + " | all right | realism | blobs/img |"
    )
    sep = "|" + "---|" * (len(CATEGORIES) + 5)
    lines = [head, sep]
    for name, c in conds.items():
        cats = " | ".join(
            f"{c['per_category'][k]:.3f}" if k in c["per_category"] else "-" for k in CATEGORIES
        )
        lines.append(
            f"| {name} | {c['score']:.3f} | {cats} | {c['perfect']:.3f} | {c['realism']:.3f} |"
            f" {c['blobs_per_image']:.2f} |"
        )
    lines.append(f"| chance (uniform over choices) | {report['chance']:.3f} |" + " |" * 8)
    n = report["n"]
    lines.append("")
    lines.append(
        f"n = {n} eval-split examples (seed {report['seed']}); score is question-weighted."
    )
    return "\n".join(lines)
