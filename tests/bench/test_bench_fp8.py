"""Float8 H-features of the device index (GpuIndex): round-trip error bound on the toy
model's real H-features, image effect, memory at SD-Turbo size (docs/perf.md).

The bound: e4m3 keeps 3 mantissa bits and every row is scaled so its amax maps to 448.
Rounding to nearest errs by at most half an ulp; in the top binade [256, 448] the ulp is
32, so no element errs by more than 16/448 = 1/28 = 0.0357 of its row's amax, plus the
float16 rounding of the dequantised value (2^-11 relative): 0.0362. Per element the
relative error is at most 2^-4 (half an ulp of a 3-bit mantissa), and for values spread
over binades the RMS is far below that: measured 0.0264 mean / 0.0283 max relative L2 per
row on 256 real toy rows and 0.0264 on random normal rows (docs/perf.md). The test bounds
the per-row relative L2 by 0.035 (25 % above the measured worst row; a scale or cast bug
doubles it), and asserts the error is not ~0 (fp8 really is applied).
"""

from __future__ import annotations

import pytest
import torch

from bench.fp8 import (
    PAPER_PAIRS,
    image_effect,
    memory_per_pair,
    real_features,
    round_trip,
    roundtrip_error,
)

MAX_ABS_OVER_AMAX = 16 / 448 + 2**-11  # half an ulp of the top binade + fp16 output rounding
MAX_REL_L2 = 0.035


@pytest.fixture(scope="module")
def toy():
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline

    if not (SHIPPED / "unet").is_dir():
        pytest.skip(f"no shipped toy model at {SHIPPED}")
    pipe = OneStepPipeline.from_pretrained(SHIPPED)
    feats, pooled, _ = real_features(pipe, 48)
    return pipe, feats, pooled


def test_fp8_round_trip_of_real_h_features_is_within_the_bound(toy) -> None:
    _, feats, _ = toy
    assert feats.dtype == torch.float16 and feats.shape[1:] == (128, 4, 4)
    err = roundtrip_error("real", feats, round_trip(feats, "float8"))
    assert err.rel_l2_max < MAX_REL_L2, err
    assert err.max_abs_over_row_amax <= MAX_ABS_OVER_AMAX, err
    assert err.rel_l2_mean > 0.01, f"fp8 round trip suspiciously exact: {err}"
    # the float16 index stores what the feature store holds, bit for bit
    assert roundtrip_error("fp16", feats, round_trip(feats, "float16")).max_abs == 0.0


def test_fp8_round_trip_of_random_normal_rows_has_the_same_error() -> None:
    x = torch.randn((64, 128, 4, 4), generator=torch.Generator().manual_seed(0)).half()
    err = roundtrip_error("random", x, round_trip(x, "float8"))
    assert 0.02 < err.rel_l2_mean < MAX_REL_L2 and err.max_abs_over_row_amax <= MAX_ABS_OVER_AMAX


@pytest.mark.parametrize(("mode", "k"), [("inject", 1), ("adapter", 2)])
def test_fp8_features_change_generated_images_by_a_small_fraction_of_retrievals_effect(toy, mode: str, k: int) -> None:
    from bench.recall import query_prompts

    pipe, feats, pooled = toy
    eff = image_effect(pipe, pooled, feats, query_prompts(8), k=k, mode=mode)
    assert eff.ref_off_mean_diff > 0.5  # retrieval does change the image
    # fp8 moves the image by a fraction of a level on average, and by a small fraction of what
    # retrieval itself moves; a wrong scale or cast moves it by about as much as retrieval does.
    # Measured (docs/perf.md) on the model shipped since issue 13's eighth run, 48 prompts:
    # adapter 0.149 levels mean and 2.2 % of values off by > 1 against retrieval's 3.8 and 19 %,
    # inject 0.063 and 1.0 % against 5.0 and 25 %; here, 8 prompts: adapter 0.075 and 1.1 %
    # against 2.7 and 18.5 %, inject 0.099 and 1.4 % against 4.2 and 24 %. (With 2 prompts,
    # as this test had, inject gave 0.25 and 4.1 %: too few to bound.)
    assert eff.mean_diff < 0.25 and eff.mean_diff < 0.05 * eff.ref_off_mean_diff, eff
    assert eff.share_gt1 < 0.1 * eff.ref_off_share_gt1, eff


def test_memory_per_pair_at_sd_turbo_size() -> None:
    m = memory_per_pair()
    assert m["float16"]["feature_bytes_per_pair"] == 1280 * 8 * 8 * 2
    assert m["float8"]["feature_bytes_per_pair"] == 1280 * 8 * 8 + 4
    assert 100 < m["float16"]["total_GB"] < 110  # ~104.5 GB at 630K (features + embedding)
    assert m["float8"]["total_GB"] < 0.51 * m["float16"]["total_GB"]
    assert PAPER_PAIRS == 630_000
