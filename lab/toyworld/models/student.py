"""Stage 4: the one-step student, distilled from the teacher.

The student starts from the teacher's weights and runs exactly as
``OneStepPipeline`` does: input z = sqrt(1-ᾱ_T)·ε at T = 999, output read as v, so
x̂0 = sqrt(ᾱ_T)·z - sqrt(1-ᾱ_T)·v̂. Losses:

* regression: smooth-L1 between x̂0 and the teacher's 25-step CFG sample from the
  same ε (a fixed noise -> sample pairing, so the target is well defined);
* adversarial (weight ``adv_weight``): a small projection discriminator on latents,
  conditioned on the pooled text embedding, hinge loss; "real" are VAE latents of
  renders with their captions, "fake" the student's x̂0. Both are re-noised at a
  random timestep s of the teacher's schedule (latent adversarial training) so the
  discriminator judges structure at several noise levels.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from engines.pipeline import alphas_cumprod_from_config
from lab.toyworld.models.common import LossLog, batches, out_of_time
from toyworld.models.common import autocast
from toyworld.models.configs import SCHEDULER, FamilyConfig
from training.ema import ParamEMA

log = logging.getLogger(__name__)
STUDENT_T = 999


class LatentDiscriminator(nn.Module):
    """(B,4,h,w) latents + (B,D) pooled text + (B,) timestep -> (B,) realness."""

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(4, w, 3, 1, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
        )
        self.t_emb = nn.Embedding(1000, 4 * w)
        self.proj = spectral_norm(nn.Linear(dim, 4 * w))
        self.out = spectral_norm(nn.Linear(4 * w, 1))

    def forward(self, z: torch.Tensor, pooled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = self.net(z).mean((2, 3)) + self.t_emb(t)
        return self.out(F.leaky_relu(f, 0.2)).squeeze(1) + (f * self.proj(pooled)).sum(1) / math.sqrt(f.shape[1])


def student_x0(unet: torch.nn.Module, eps: torch.Tensor, ctx: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
    """The pipeline's one step: eps (B,4,h,w) -> x̂0 (B,4,h,w)."""
    a = ac[STUDENT_T]
    z = (1 - a).sqrt() * eps
    t = torch.full((eps.shape[0],), STUDENT_T, device=eps.device)
    with autocast(eps.device):
        v = unet(z, t, ctx).sample.float()
    return a.sqrt() * z - (1 - a).sqrt() * v


def distill_student(
    cfg: FamilyConfig,
    teacher: torch.nn.Module,
    noise: torch.Tensor,
    targets: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    real_latents: torch.Tensor,
    real_pooled: torch.Tensor,
    device: torch.device,
    time_limit_s: float | None = None,
) -> tuple[torch.nn.Module, LossLog]:
    """noise/targets (N,4,h,w), context (N,77,D), pooled (N,D) of the distillation prompts;
    real_latents (M,4,h,w) + real_pooled (M,D) for the discriminator -> (student UNet, log)."""
    import copy

    torch.manual_seed(cfg.seed + 3)
    student = copy.deepcopy(teacher).float().to(device).train().requires_grad_(True)
    ema = ParamEMA(list(student.named_parameters()), 0.998 if cfg.student.steps >= 1000 else 0.8)
    disc = LatentDiscriminator(pooled.shape[1]).to(device)
    run = cfg.student
    opt = torch.optim.AdamW(student.parameters(), lr=run.lr, weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.0, 0.99))
    ac = alphas_cumprod_from_config(SCHEDULER).float().to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    real_it = batches(len(real_latents), run.batch_size, gen, device)
    lg = LossLog("student")
    step = 0

    def renoise(z: torch.Tensor, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a = ac[s].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * e

    for step, idx in enumerate(batches(len(noise), run.batch_size, gen, device), start=1):
        x0 = student_x0(student, noise[idx].float(), context[idx], ac)
        reg = F.smooth_l1_loss(x0, targets[idx].float(), beta=0.1)
        b = x0.shape[0]
        s = torch.randint(0, 750, (b,), device=device)
        e = torch.randn_like(x0)
        adv = torch.zeros((), device=device)
        if cfg.adv_weight > 0:
            adv = -disc(renoise(x0, s, e), pooled[idx], s).mean()
        loss = reg + cfg.adv_weight * adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema.update()
        if cfg.adv_weight > 0:
            ridx = next(real_it)
            sr = torch.randint(0, 750, (b,), device=device)
            d_real = disc(renoise(real_latents[ridx].float(), sr, torch.randn_like(x0)), real_pooled[ridx], sr)
            d_fake = disc(renoise(x0.detach(), s, e), pooled[idx], s)
            d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        lg.add(step, reg.item(), run.log_every)
        if step >= run.steps or out_of_time(lg.t0, time_limit_s):
            break
    ema.copy_to()
    return student.float().eval().requires_grad_(False), lg.finish(step)
