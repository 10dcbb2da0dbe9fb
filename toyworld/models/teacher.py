"""The teacher's sampler: deterministic DDIM (diffusers' ``DDIMScheduler``) over ``steps``
trailing timesteps (999 first) with classifier-free guidance ``w``, on the family's
v-prediction schedule (``toyworld.models.configs.SCHEDULER``)."""

from __future__ import annotations

import torch

from toyworld.models.common import autocast
from toyworld.models.configs import SCHEDULER


def ddim_scheduler(steps: int) -> object:
    """diffusers' ``DDIMScheduler`` for the family's schedule (v-prediction, trailing spacing,
    999 first), eta = 0, no x0 clipping (latents are not pixels), final ᾱ = 1 (the last step
    returns the predicted x0), with ``steps`` timesteps set."""
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in SCHEDULER.items() if not k.startswith("_")}
    sched = DDIMScheduler(**{k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                   "prediction_type", "timestep_spacing", "steps_offset")},
                          clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    return sched


@torch.no_grad()
def sample(
    unet: torch.nn.Module,
    context: torch.Tensor,
    uncond: torch.Tensor,
    noise: torch.Tensor,
    steps: int = 25,
    guidance: float = 3.0,
) -> torch.Tensor:
    """DDIM (eta=0, diffusers' ``DDIMScheduler.step``) with classifier-free guidance:
    noise (B,4,h,w) -> x0 latents (B,4,h,w)."""
    dev = noise.device
    sched = ddim_scheduler(steps)
    x = noise.float()
    b = x.shape[0]
    ctx2 = torch.cat([uncond.to(context.dtype).expand_as(context), context])
    for t in sched.timesteps:  # type: ignore[attr-defined]
        with autocast(dev):
            out = unet(torch.cat([x, x]), torch.full((2 * b,), int(t), device=dev), ctx2).sample.float()
        vu, vc = out.chunk(2)
        x = sched.step(vu + guidance * (vc - vu), int(t), x).prev_sample  # type: ignore[attr-defined]
    return x
