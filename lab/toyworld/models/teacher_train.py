"""The teacher UNet's training (v-prediction): x_t = sqrt(ᾱ_t)·z0 + sqrt(1-ᾱ_t)·ε with t
uniform over the 1000 training steps, target v = sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·z0, MSE; the
caption is replaced by the empty prompt with probability ``caption_dropout`` (for
classifier-free guidance). The EMA of the weights is the teacher. Its sampler is
``toyworld.models.teacher.sample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engines.pipeline import alphas_cumprod_from_config
from lab.toyworld.models.common import LossLog, batches, out_of_time
from toyworld.models.common import autocast
from toyworld.models.configs import SCHEDULER, FamilyConfig
from training.ema import ParamEMA
from training.schedule import lambda_lr


def v_target(z0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    a = a.view(-1, 1, 1, 1)
    return a.sqrt() * eps - (1 - a).sqrt() * z0


def train_teacher(
    cfg: FamilyConfig,
    latents: torch.Tensor,
    context: torch.Tensor,
    uncond: torch.Tensor,
    device: torch.device,
    time_limit_s: float | None = None,
    init: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, LossLog]:
    """latents (N,4,h,w), context (N,77,D), uncond (1,77,D) -> (EMA UNet, loss log)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(cfg.seed + 2)
    unet = init if init is not None else UNet2DConditionModel(**cfg.unet_kwargs())
    unet = unet.to(device).train()
    ema = ParamEMA(list(unet.named_parameters()), float(cfg.extra.get("teacher_ema", 0.999 if cfg.teacher.steps >= 2000 else 0.9)))
    run = cfg.teacher
    opt = torch.optim.AdamW(unet.parameters(), lr=run.lr, weight_decay=0.0)
    sched = lambda_lr(opt, 200, run.steps, "cosine", 0.1, time_limit_s)

    ac = alphas_cumprod_from_config(SCHEDULER).float().to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    lg = LossLog("teacher")
    step = 0
    for step, idx in enumerate(batches(len(latents), run.batch_size, gen, device), start=1):
        z0 = latents[idx].float()
        b = z0.shape[0]
        ctx = context[idx]
        drop = torch.rand(b, device=device) < cfg.caption_dropout
        ctx = torch.where(drop[:, None, None], uncond.to(ctx.dtype).expand_as(ctx), ctx)
        t = torch.randint(0, len(ac), (b,), device=device)
        eps = torch.randn_like(z0)
        a = ac[t]
        zt = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
        with autocast(device):
            pred = unet(zt, t, ctx).sample.float()
        loss = F.mse_loss(pred, v_target(z0, eps, a))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update()
        lg.add(step, loss.item(), run.log_every)
        if step >= run.steps or out_of_time(lg.t0, time_limit_s):
            break
    ema.copy_to()
    return unet.float().eval().requires_grad_(False), lg.finish(step)
