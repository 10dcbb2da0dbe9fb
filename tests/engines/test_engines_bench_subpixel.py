"""Sub-pixel VAE upsampling computes the same function as nearest ×2 + 3x3 conv."""

from __future__ import annotations

import pytest
import torch

from engines.fast.subpixel import SubpixelUpsample2D, reference_upsample, subpixel_decoder


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 4, 1, 1), (3, 6, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_matches_upsample_then_conv(shape: tuple[int, int, int, int], channels_last: bool) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    b, c, h, w = shape
    conv = torch.nn.Conv2d(c, 5, 3, padding=1).double()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = SubpixelUpsample2D(conv)(x)
        want = reference_upsample(x, conv)
    assert got.shape == (b, 5, 2 * h, 2 * w)
    # taps are folded in float32, so agreement is to float32 rounding, not float64
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_subpixel_rejects_other_convs() -> None:
    with pytest.raises(ValueError, match="3x3 conv with padding 1"):
        SubpixelUpsample2D(torch.nn.Conv2d(4, 4, 5, padding=2))


def test_subpixel_decoder_matches_tiny_vae_decoder() -> None:
    from engines.random_models import build_random_components

    vae = build_random_components("tiny", seed=3)["vae"]
    new, n = subpixel_decoder(vae.decoder)
    assert n == 3  # one upsampler per up block but the last
    assert new is not vae.decoder
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = vae.decoder(z)
        got = new(z)
    assert got.shape == want.shape == (2, 3, 64, 64)
    assert (got - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
