"""Splits: deterministic, retrieval disjoint from training, long tail rare in training."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from toyworld.parse import parse
from toyworld.render import render
from toyworld.splits import (
    LONG_TAIL_PAIRS,
    eval_split,
    has_long_tail,
    is_held_out_caption,
    retrieval_split,
    split,
    train_split,
    write_split,
)


def _digest(img: np.ndarray) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


def test_splits_are_deterministic_and_prefix_stable() -> None:
    assert split("train", 20, seed=3) == split("train", 20, seed=3)
    assert split("train", 50, seed=3)[:20] == split("train", 20, seed=3)
    assert split("train", 5, seed=3) != split("train", 5, seed=4)


def test_retrieval_images_are_disjoint_from_training_images() -> None:
    train = {_digest(render(ex.scene)) for ex in train_split(300)}
    retr = {_digest(render(ex.scene)) for ex in retrieval_split(300)}
    evl = {_digest(render(ex.scene)) for ex in eval_split(100)}
    assert len(train) == 300 and len(retr) == 300
    assert not train & retr
    assert not train & evl


def test_long_tail_is_rare_in_training_and_present_in_retrieval() -> None:
    train = train_split(4000)
    rate = sum(has_long_tail(ex.scene.spec) for ex in train) / len(train)
    assert 0 < rate <= 0.01, rate
    retr = retrieval_split(200)
    pairs = Counter(p for ex in retr for p in ex.scene.spec.colour_shape_pairs())
    for pair in LONG_TAIL_PAIRS:
        assert pairs[pair] >= 10, (pair, pairs[pair])
    assert sum(has_long_tail(ex.scene.spec) for ex in retr) / len(retr) >= 0.2


def test_held_out_phrasings_only_in_eval_and_eval_mixes_common_and_long_tail() -> None:
    for ex in train_split(1500) + retrieval_split(500):
        assert not is_held_out_caption(ex.caption), ex.caption
    ev = eval_split(200)
    tags = Counter((has_long_tail(parse(ex.caption)), is_held_out_caption(ex.caption)) for ex in ev)
    assert tags[(False, False)] == 100  # common combinations, seen phrasings
    assert tags[(True, False)] == 50  # long-tail combinations
    assert tags[(False, True)] == 50  # held-out phrasings
    for ex in ev:  # the reference render satisfies its prompt
        assert parse(ex.caption).agrees_with(ex.scene.spec)


def test_writer_produces_the_ingest_format(tmp_path: Path) -> None:
    jsonl = write_split(tmp_path / "ev", "eval", 6, seed=1)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    examples = eval_split(6, seed=1)
    assert [r["caption"] for r in rows] == [ex.caption for ex in examples]
    prompts = (tmp_path / "ev" / "prompts.txt").read_text().splitlines()
    assert prompts == [ex.caption for ex in examples]
    for r, ex in zip(rows, examples, strict=True):
        img = np.asarray(Image.open(tmp_path / "ev" / r["file"]))
        assert img.shape == (64, 64, 3)
        assert np.array_equal(img, render(ex.scene))  # PNG is lossless
    assert not (tmp_path / "tr").exists()
    write_split(tmp_path / "tr", "train", 3)
    assert not (tmp_path / "tr" / "prompts.txt").exists()
