"""The fidelity checker: right on true images, wrong on wrong ones, no better than chance on noise."""

from __future__ import annotations

import numpy as np
import pytest

from toyworld.checker import chance_level, questions, score
from toyworld.detect import analyse
from toyworld.parse import PromptOutsideGrammar, parse
from toyworld.render import degrade, noise_image, render
from toyworld.report import checker_report, format_table
from toyworld.scene import layout
from toyworld.splits import eval_split, train_split


def _render_prompt(prompt: str, seed: int = 0) -> np.ndarray:
    return render(layout(parse(prompt), np.random.default_rng(seed)))


@pytest.fixture(scope="module")
def report() -> dict:
    return checker_report(n=100, seed=99)


def test_questions_cover_what_the_prompt_states() -> None:
    qs = questions("a big purple diamond above an orange cross on a navy background")
    got = {(q.category, q.text, q.expected) for q in qs}
    assert ("relation", "Where is the diamond relative to the cross?", "above") in got
    assert ("colour", "What colour is the cross?", "orange") in got
    assert ("size", "Is the diamond big or small?", "big") in got
    assert ("colour", "What colour is the background?", "navy") in got
    assert not any(q.category == "size" and "cross" in q.text for q in qs)  # size unstated
    qs = questions("three green triangles")
    assert ("count", "three") in {(q.category, q.expected) for q in qs}
    with pytest.raises(PromptOutsideGrammar):
        questions("a photo of a cat")


def test_clean_renders_score_at_least_098() -> None:
    examples = eval_split(200, seed=5) + train_split(100, seed=5)
    scores = [score(render(ex.scene), ex.caption).score for ex in examples]
    assert float(np.mean(scores)) >= 0.98


def test_wrong_images_lose_exactly_the_wrong_answers() -> None:
    img = _render_prompt("a big red circle on a gray background")
    assert score(img, "a big red circle").score == 1.0
    res = score(img, "a big blue circle")
    assert res.per_category["colour"] == 0.0 and res.per_category["object"] == 1.0
    assert score(img, "a small red circle").per_category["size"] == 0.0
    assert score(img, "two red circles").per_category["count"] == 0.0
    assert score(img, "a red square").per_category["object"] == 0.0
    assert score(img, "a red circle on a brown background").per_category["colour"] == 0.5
    rel = _render_prompt("a red circle to the left of a blue square")
    assert score(rel, "a red circle to the left of a blue square").score == 1.0
    assert score(rel, "a red circle to the right of a blue square").per_category["relation"] == 0


def test_noise_scores_no_better_than_chance(report: dict) -> None:
    noise = report["conditions"]["noise"]
    assert noise["score"] <= report["chance"]
    assert noise["realism"] < 0.2
    assert report["conditions"]["mismatched"]["score"] < 0.5


def test_report_clean_and_degraded(report: dict) -> None:
    c = report["conditions"]
    assert c["clean"]["score"] >= 0.98 and c["clean"]["realism"] >= 0.98
    assert c["moderate"]["score"] >= 0.9
    assert 0.2 < report["chance"] < 0.5
    assert "| clean |" in format_table(report)


def test_analysis_works_on_blurry_generations_and_other_sizes() -> None:
    ex = eval_split(1, seed=2)[0]
    img = render(ex.scene)
    blurry = degrade(img, np.random.default_rng(0), blur_sigma=1.0, noise_std=10, colour_shift=20)
    assert score(blurry, ex.caption).score == 1.0
    big = np.kron(img, np.ones((4, 4, 1), dtype=np.uint8))  # 256x256 upscale
    assert score(big, ex.caption).score == 1.0
    assert analyse(noise_image(np.random.default_rng(1))).blobs == ()
    assert chance_level(questions("a red circle")) == pytest.approx((0.5 + 1 / 8 + 1 / 3) / 3)


def test_score_images_aggregates_generated_images_per_prompt() -> None:
    from toyworld.scoring import aggregate, score_images

    exs = eval_split(8, seed=3)
    prompts = [e.caption for e in exs]
    good = aggregate(score_images(np.stack([render(e.scene) for e in exs]), prompts, workers=2))
    assert good["overall"] == 1.0 and good["n"] == 8 and good["realism"] == 1.0
    swapped = aggregate(score_images(np.stack([render(e.scene) for e in exs[::-1]]), prompts, workers=1))
    assert swapped["overall"] < 0.6
    with pytest.raises(ValueError, match="0 images for 1 prompts"):
        score_images(np.zeros((0, 64, 64, 3), np.uint8), ["a red circle"])
