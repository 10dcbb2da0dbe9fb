"""Captions: several phrasings, all parse back to the scene they describe."""

from __future__ import annotations

import numpy as np
import pytest

from toyworld.grammar import Phrasing, caption, describe
from toyworld.parse import PromptOutsideGrammar, parse
from toyworld.scene import ObjectSpec, SceneSpec, sample_spec


@pytest.mark.parametrize("held_out", [False, True])
def test_every_sampled_caption_parses_back_to_its_scene(held_out: bool) -> None:
    seen = set()
    for i in range(1500):
        rng = np.random.default_rng(i)
        full = sample_spec(rng)
        text, said = describe(full, rng, held_out=held_out)
        got = parse(text)
        assert got == said, text
        assert got.agrees_with(full), text
        seen.add(text.split()[0])
    assert {"a", "an", "there", "two", "three", "one"} <= seen  # several phrasings in use


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a big red circle", SceneSpec("single", (ObjectSpec("circle", "red", "big"),))),
        ("one red circle", SceneSpec("single", (ObjectSpec("circle", "red"),))),
        ("A circle that is red.", SceneSpec("single", (ObjectSpec("circle", "red"),))),
        (
            "a red circle on a gray background",
            SceneSpec("single", (ObjectSpec("circle", "red"),), background="gray"),
        ),
        (
            "an orange square on a plain background",
            SceneSpec("single", (ObjectSpec("square", "orange"),), background="black"),
        ),
        ("two green triangles", SceneSpec("group", (ObjectSpec("triangle", "green"),), count=2)),
        (
            "there are three small crosses that are cyan against a grey background",
            SceneSpec("group", (ObjectSpec("cross", "cyan", "small"),), count=3, background="gray"),
        ),
        (
            "a purple diamond above an orange cross",
            SceneSpec(
                "relation",
                (ObjectSpec("diamond", "purple"), ObjectSpec("cross", "orange")),
                relation="above",
            ),
        ),
        (
            "there is a red circle to the left of a green square",
            SceneSpec(
                "relation",
                (ObjectSpec("circle", "red"), ObjectSpec("square", "green")),
                relation="left of",
            ),
        ),
        (
            "an image showing a white colored diamond beneath a big blue triangle",
            SceneSpec(
                "relation",
                (ObjectSpec("diamond", "white"), ObjectSpec("triangle", "blue", "big")),
                relation="below",
            ),
        ),
    ],
)
def test_documented_phrasings_parse(prompt: str, expected: SceneSpec) -> None:
    assert parse(prompt) == expected


def test_caption_of_a_parsed_prompt_round_trips() -> None:
    spec = parse("a small yellow square is right of a big white circle on a navy background")
    ph = Phrasing(np_style="that", frame="there", rel_word="to the right of", bg_style="on")
    text = caption(spec, ph)
    assert text == (
        "there is a small square that is yellow to the right of a big circle that is white"
        " on a navy background"
    )
    assert parse(text) == spec


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a hexagon", "hexagon"),
        ("a red hexagon", "hexagon"),
        ("two red circle", "plural"),
        ("a red circles", "plural"),
        ("a magenta circle", "magenta"),
        ("a red circle on a pink background", "pink"),
        ("a red circle on a blue background", "'blue' is not a background"),
        ("two red circles above a blue square", "single objects"),
        ("a red circle above a blue circle", "differ in shape"),
        ("", "empty"),
        ("a photo of a cat", "cat"),
    ],
)
def test_prompts_outside_the_grammar_raise_a_clear_error(prompt: str, needle: str) -> None:
    with pytest.raises(PromptOutsideGrammar, match=needle) as info:
        parse(prompt)
    assert repr(prompt) in str(info.value)
