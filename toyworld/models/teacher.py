"""The teacher's sampler: deterministic DDIM (diffusers' ``DDIMScheduler``) over ``steps``
trailing timesteps (999 first) with classifier-free guidance ``w``, on the family's
v-prediction schedule (``toyworld.models.configs.SCHEDULER``)."""

from __future__ import annotations

import torch

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
    """DDIM (eta=0, diffusers' ``DDIMScheduler.step``) with classifier-free guidance
    (``training.teacher_samples.guided_sample``): noise (B,4,h,w) -> x0 latents (B,4,h,w)."""
    from training.teacher_samples import guided_sample

    ctx2 = torch.cat([uncond.to(context.dtype).expand_as(context), context])
    return guided_sample(unet, ddim_scheduler(steps), noise.float(), ctx2, guidance, amp=noise.device.type == "cuda")
