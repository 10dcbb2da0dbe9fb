"""The toy model's declared vocabulary: exactly the words its training captions hold."""

from __future__ import annotations

import re
from pathlib import Path

from engines.default_model import SHIPPED
from engines.vocabulary import Vocabulary
from toyworld.models.data import eval_prompts, make_split
from toyworld.vocabulary import training_words, write_model_vocabulary


def _words(captions: list[str]) -> set[str]:
    return {w for c in captions for w in re.findall(r"\w+", c.lower())}


def test_training_words_are_the_words_of_every_training_split() -> None:
    known = set(training_words())
    for split in ("train", "retrieval", "adapter"):
        seen = _words(make_split(split, 1500, workers=1, images=False).captions)
        assert seen == known, (split, seen ^ known)


def test_the_eval_prompts_held_out_phrasings_are_unknown() -> None:
    prompts, _ = eval_prompts(100, 100)
    assert _words(prompts) - set(training_words()) == {"coloured", "image", "showing", "against", "beneath"}


def test_the_shipped_model_declares_its_training_words(tmp_path: Path) -> None:
    shipped = Vocabulary.read(SHIPPED / "vocabulary.txt")
    assert shipped.words == frozenset(training_words())
    assert shipped.unknown_words("A pink Ring, on a gray background!") == ["pink", "ring"]
    written = Vocabulary.read(write_model_vocabulary(tmp_path))
    assert written.words == shipped.words
