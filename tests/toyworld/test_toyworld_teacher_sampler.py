"""The teacher's DDIM + CFG sampler is diffusers' ``DDIMScheduler``; it must give what the
hand-written sampler it replaced gave (the published teacher rows were made with that one)."""

from __future__ import annotations

import torch

from engines.pipeline import alphas_cumprod_from_config
from toyworld.models.configs import SCHEDULER, get_family


def _old_sample(unet, context, uncond, noise, steps, guidance):  # type: ignore[no-untyped-def]
    """The hand-written DDIM (eta = 0) + CFG of toyworld/models/teacher.py until 2026-12-05."""
    ac = alphas_cumprod_from_config(SCHEDULER).float()
    ts = [round(1000 - i * (1000 / steps)) - 1 for i in range(steps)]
    x = noise.float()
    b = x.shape[0]
    ctx2 = torch.cat([uncond.expand_as(context), context])
    x0 = x
    for i, t in enumerate(ts):
        out = unet(torch.cat([x, x]), torch.full((2 * b,), t), ctx2).sample.float()
        vu, vc = out.chunk(2)
        v = vu + guidance * (vc - vu)
        a = ac[t]
        x0 = a.sqrt() * x - (1 - a).sqrt() * v
        eps = (1 - a).sqrt() * x + a.sqrt() * v
        if i + 1 < len(ts):
            ap = ac[ts[i + 1]]
            x = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    return x0


@torch.no_grad()
def test_ddim_scheduler_sampler_matches_the_hand_written_one() -> None:
    from diffusers import UNet2DConditionModel

    from toyworld.models.teacher import ddim_scheduler, sample

    cfg = get_family("tiny-mid")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg.unet_kwargs()).eval()
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(3, 77, cfg.text_hidden, generator=g)
    unc = torch.randn(1, 77, cfg.text_hidden, generator=g)
    noise = torch.randn(3, 4, cfg.latent_size, cfg.latent_size, generator=g)
    for steps in (4, 25):
        assert [int(t) for t in ddim_scheduler(steps).timesteps][:2] == [999, 999 - 1000 // steps]
        new = sample(unet, ctx, unc, noise, steps, 3.0)
        old = _old_sample(unet, ctx, unc, noise, steps, 3.0)
        assert new.shape == old.shape
        assert torch.isfinite(new).all()
        rel = ((new - old).norm() / old.norm()).item()
        assert rel < 1e-5, (steps, rel)
