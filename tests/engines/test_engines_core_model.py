"""UNet split, H-adapter and slerp injection: the model graph of the README and docs/engines.md."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from engines.configs import get_arch, sd_turbo, tiny
from engines.hadapter import HAdapter
from engines.inject import slerp_inject
from engines.unet_split import HSplitUNet


def _unet_inputs(unet: UNet2DConditionModel, hw: int, b: int = 2, t: int = 999) -> tuple:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, unet.config.in_channels, hw, hw, generator=g)
    ctx = torch.randn(b, 77, unet.config.cross_attention_dim, generator=g)
    return z, torch.tensor([t] * b), ctx


def test_split_equals_plain_forward_tiny() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny().unet).eval()
    split = HSplitUNet(unet)
    for t in (0, 500, 999):
        z, ts, ctx = _unet_inputs(unet, 8, t=t)
        with torch.no_grad():
            ref = unet(z, ts, ctx).sample
            h, skips, temb = split.encode(z, ts, ctx)
            out = split.decode(h, skips, temb, ctx)
        assert h.shape == (2, 64, 4, 4)
        assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.slow
def test_split_equals_plain_forward_sd_turbo_architecture() -> None:
    """SD-Turbo's real architecture (866M params, random weights); a 16x16 latent keeps CPU time low."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd_turbo().unet).eval()
    assert sum(p.numel() for p in unet.parameters()) > 800e6
    split = HSplitUNet(unet)
    z, ts, ctx = _unet_inputs(unet, 16, b=1)
    with torch.no_grad():
        ref = unet(z, ts, ctx).sample
        h, skips, temb = split.encode(z, ts, ctx)
        out = split.decode(h, skips, temb, ctx)
    assert h.shape == (1, 1280, 2, 2)  # 8x8 at the native 64x64 latent
    assert split.h_shape((64, 64)) == (1280, 8, 8)
    assert (out - ref).abs().max().item() < 1e-5


def test_split_rejects_indivisible_latent() -> None:
    unet = UNet2DConditionModel(**tiny().unet).eval()
    z, ts, ctx = _unet_inputs(unet, 8)
    with pytest.raises(ValueError, match="divisible"):
        HSplitUNet(unet).encode(z[..., :7, :7], ts, ctx)


def test_untrained_adapter_is_identity_and_lambda_zero_is_identity() -> None:
    torch.manual_seed(0)
    ad = HAdapter(channels=64, num_heads=4, ff_mult=2).eval()
    h = torch.randn(3, 64, 4, 4)
    r = torch.randn(3, 2, 64, 4, 4)
    lam = torch.rand(3, 2)
    assert torch.equal(ad(h, r, lam), h)  # zero-initialised output projection
    torch.nn.init.normal_(ad.proj_out.weight, std=0.1)
    torch.nn.init.normal_(ad.proj_out.bias, std=0.1)  # a trained adapter has a bias too
    assert not torch.allclose(ad(h, r, lam), h)
    assert torch.equal(ad(h, r, torch.zeros(3, 2)), h)


def test_adapter_k_neighbours_sum_with_their_own_lambda_over_max_one_sum() -> None:
    """k residuals, each weighted by its own λ, divided by max(1, Σλ): row 0 (Σλ = 1.4) is the
    λ-weighted mean, row 1 (Σλ = 0.9) the plain λ-weighted sum."""
    torch.manual_seed(0)
    ad = HAdapter(channels=64, num_heads=4, ff_mult=2).eval()
    torch.nn.init.normal_(ad.proj_out.weight, std=0.1)
    torch.nn.init.normal_(ad.proj_out.bias, std=0.1)
    h = torch.randn(2, 64, 4, 4)
    r = torch.randn(2, 3, 64, 4, 4)
    lam = torch.tensor([[0.9, 0.5, 0.0], [0.2, 0.0, 0.7]])
    with torch.no_grad():
        joint = ad(h, r, lam) - h
        parts = sum(ad(h, r[:, i : i + 1], lam[:, i : i + 1]) - h for i in range(3))
    scale = torch.tensor([1 / 1.4, 1.0])[:, None, None, None]
    assert (joint - parts * scale).abs().max().item() < 1e-5
    assert (joint[0] - parts[0]).abs().max().item() > 1e-3  # the division is not a no-op


def test_adapter_one_neighbour_is_never_rescaled() -> None:
    """λ is a cosine (≤ 1), so at k = 1 the residual is λ · Block: the published k = 1 path."""
    torch.manual_seed(1)
    ad = HAdapter(channels=64, num_heads=4, ff_mult=2).eval()
    torch.nn.init.normal_(ad.proj_out.weight, std=0.1)
    h, r = torch.randn(2, 64, 4, 4), torch.randn(2, 1, 64, 4, 4)
    with torch.no_grad():
        full = ad(h, r, torch.ones(2, 1)) - h
        half = ad(h, r, torch.full((2, 1), 0.5)) - h
    assert torch.allclose(half, 0.5 * full, atol=1e-6)


def test_adapter_query_gate_at_zero_is_the_gateless_block_and_open_sees_the_query() -> None:
    """``query_gate``: g = 0 is exactly the block without it (old weights load unchanged);
    an open gate lets the output depend on the query's own tokens, not only on which
    neighbour tokens it attends to, and survives a save/load round trip."""
    torch.manual_seed(0)
    old = HAdapter(channels=64, num_heads=4, ff_mult=2).eval()
    torch.nn.init.normal_(old.proj_out.weight, std=0.1)
    gated = HAdapter(channels=64, num_heads=4, ff_mult=2, query_gate=True).eval()
    assert gated.config.query_gate and old.q_gate is None
    missing = gated.load_state_dict(old.state_dict(), strict=False).missing_keys
    assert missing == ["q_gate"] and torch.equal(gated.q_gate, torch.zeros(64))
    h, r, lam = torch.randn(2, 64, 4, 4), torch.randn(2, 1, 64, 4, 4), torch.ones(2, 1)
    with torch.no_grad():
        assert torch.equal(gated(h, r, lam), old(h, r, lam))
        gated.q_gate.fill_(1.0)
        assert (gated(h, r, lam) - old(h, r, lam)).abs().max().item() > 1e-3
        # with a single neighbour token the attention is the same for any query: only the
        # gate lets the output follow the query
        r1 = torch.randn(2, 1, 64, 1, 1)
        h2 = torch.randn(2, 64, 4, 4)
        d_old = old(h, r1, lam) - h - (old(h2, r1, lam) - h2)
        d_gated = gated(h, r1, lam) - h - (gated(h2, r1, lam) - h2)
    assert d_old.abs().max().item() < 1e-5 and d_gated.abs().max().item() > 1e-3


def test_adapter_shape_errors_name_shapes() -> None:
    ad = HAdapter(channels=64, num_heads=4)
    with pytest.raises(ValueError, match=r"\(2, 64, 4, 4\)"):
        ad(torch.randn(2, 64, 4, 4), torch.randn(3, 1, 64, 4, 4), torch.ones(3, 1))
    with pytest.raises(ValueError, match="divisible"):
        HAdapter(channels=64, num_heads=5)


def test_adapter_save_load_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    ad = HAdapter(channels=64, num_heads=4, ff_mult=2).eval()
    torch.nn.init.normal_(ad.proj_out.weight, std=0.1)
    ad.save_pretrained(tmp_path / "hadapter")
    assert (tmp_path / "hadapter" / "config.json").is_file()
    assert list((tmp_path / "hadapter").glob("*.safetensors"))
    back = HAdapter.from_pretrained(tmp_path / "hadapter", local_files_only=True).eval()
    h, r, lam = torch.randn(1, 64, 4, 4), torch.randn(1, 1, 64, 4, 4), torch.ones(1, 1)
    with torch.no_grad():
        assert torch.equal(ad(h, r, lam), back(h, r, lam))
    gated = HAdapter(channels=64, num_heads=4, ff_mult=2, query_gate=True).eval()
    with torch.no_grad():
        gated.q_gate.normal_()
        torch.nn.init.normal_(gated.proj_out.weight, std=0.1)
    gated.save_pretrained(tmp_path / "gated")
    back = HAdapter.from_pretrained(tmp_path / "gated", local_files_only=True).eval()
    assert back.config.query_gate and torch.equal(back.q_gate, gated.q_gate)
    with torch.no_grad():
        assert torch.equal(gated(h, r, lam), back(h, r, lam))


def test_sd_turbo_adapter_size_matches_paper_scale() -> None:
    """The paper's adapter is ~36M parameters (4% of the UNet); ours is one block at 1280."""
    ad = HAdapter(**sd_turbo().hadapter)
    n = sum(p.numel() for p in ad.parameters())
    assert 25e6 < n < 45e6


def test_slerp_endpoints_and_norm() -> None:
    torch.manual_seed(0)
    t, r = torch.randn(2, 8, 2, 2), torch.randn(2, 8, 2, 2)
    assert torch.allclose(slerp_inject(t, r, w=1.0), t, atol=1e-5)
    assert torch.allclose(slerp_inject(t, r, w=0.0), r, atol=1e-5)
    # Unit vectors stay unit along the great circle.
    tu = t / t.flatten(1).norm(dim=1)[:, None, None, None]
    ru = r / r.flatten(1).norm(dim=1)[:, None, None, None]
    mid = slerp_inject(tu, ru, w=0.8)
    assert torch.allclose(mid.flatten(1).norm(dim=1), torch.ones(2), atol=1e-5)
    # Parallel vectors fall back to linear interpolation (no NaN).
    assert torch.isfinite(slerp_inject(t, 2 * t, w=0.8)).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slerp_inject(t, r, w=1.5)


def test_get_arch_names_choices() -> None:
    assert get_arch("sd-turbo").unet["block_out_channels"][-1] == 1280
    with pytest.raises(ValueError, match="sd-turbo"):
        get_arch("sdxl")
