"""The model family's data (``toyworld.models.data``) and configs: deterministic, prefix-stable
splits with the long tail rare in training, and a clear error for an unknown family."""

from __future__ import annotations

import numpy as np
import pytest

from toyworld.models.configs import get_family


def test_splits_are_deterministic_and_long_tail_is_rare_in_training() -> None:
    from toyworld.models.data import eval_prompts, make_split

    a, b = make_split("train", 6, workers=1), make_split("train", 6, workers=1)
    assert a.captions == b.captions and np.array_equal(a.images, b.images)
    tail_of_a = make_split("train", 2, workers=1, start=4)  # items 4..5: a continued run's new rows
    assert tail_of_a.captions == a.captions[4:] and np.array_equal(tail_of_a.images, a.images[4:])
    with pytest.raises(ValueError, match="start"):
        make_split("train", 2, start=-1)
    bare = make_split("train", 6, workers=1, images=False)  # the arm stage's rows: no renders
    assert bare.images is None and bare.captions == a.captions and bare.specs == a.specs
    tr, rt = make_split("train", 300, workers=1), make_split("retrieval", 300, workers=1)
    assert tr.long_tail.mean() < 0.05 < rt.long_tail.mean()
    p, tail = eval_prompts(3, 3)
    assert len(p) == 6 and tail == [False] * 3 + [True] * 3
    assert not set(p) & set(tr.captions)


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        get_family("huge")
