"""The attribute-swap curriculum's captions (``lab.toyworld.swaps``): one colour or shape
changed, never a held-out pair, a pure function of the seed."""

from __future__ import annotations

import numpy as np


def test_swapped_captions_change_one_attribute_and_never_name_a_held_out_pair() -> None:
    from lab.toyworld.swaps import swap_attribute, swapped_captions
    from toyworld.models.data import HELD_OUT_RARE, make_split
    from toyworld.parse import parse

    sp = make_split("adapter", 200, workers=1)
    sw = swapped_captions(sp.captions, 3, HELD_OUT_RARE)
    assert sw == swapped_captions(sp.captions, 3, HELD_OUT_RARE)  # a pure function of the seed
    changed = 0
    for cap, new in zip(sp.captions, sw, strict=True):
        a, b = parse(cap), parse(new)
        assert not set(b.colour_shape_pairs()) & HELD_OUT_RARE
        if new != cap:
            changed += 1
            # exactly one word differs (besides a/an), and it is a colour or a shape
            diff = [(x, y) for x, y in zip(cap.split(), new.split(), strict=True) if x != y and x not in ("a", "an")]
            assert len(diff) == 1
            assert a.colour_shape_pairs() != b.colour_shape_pairs()
            assert a.count == b.count and a.relation == b.relation
    assert changed > 190
    rng = np.random.default_rng(0)
    assert swap_attribute("an orange circle", rng) in {f"a {c} circle" for c in ("red", "green", "blue", "yellow", "purple", "white", "cyan")} | {
        f"an orange {s}" for s in ("square", "triangle", "diamond", "cross")}
    assert swap_attribute("no colour words here", rng) is None
