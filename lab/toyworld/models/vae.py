"""Stage 1: the VAE (AutoencoderKL), 64x64 RGB <-> (4,16,16) latents.

Loss: L1 + MSE of the reconstruction from a posterior sample, plus a tiny KL
(``kl_weight``) that keeps the posterior a usable distribution. After training, the
scaling factor is set to 1/std of the posterior means so latents have ~unit variance
(what the diffusion schedule assumes).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from lab.toyworld.models.common import LossLog, batches, images_to_tensor, out_of_time
from toyworld.models.common import autocast
from toyworld.models.configs import FamilyConfig
from training.schedule import lambda_lr

log = logging.getLogger(__name__)


def train_vae(
    cfg: FamilyConfig,
    images: np.ndarray,
    device: torch.device,
    time_limit_s: float | None = None,
) -> tuple[torch.nn.Module, LossLog]:
    """images uint8 (N,64,64,3) -> (AutoencoderKL with scaling_factor set, loss log)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**cfg.vae_kwargs()).to(device).train()
    run = cfg.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=run.lr, weight_decay=0.0)
    sched = lambda_lr(opt, 100, run.steps, "cosine", 0.0, time_limit_s)

    data = torch.as_tensor(images).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    lg = LossLog("vae")
    step = 0
    for step, idx in enumerate(batches(len(data), run.batch_size, gen, device), start=1):
        x = images_to_tensor(data[idx], device)
        with autocast(device):
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean() / z[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        lg.add(step, loss.item(), run.log_every)
        if step >= run.steps or out_of_time(lg.t0, time_limit_s):
            break
    vae.eval()
    set_scaling_factor(vae, data[: min(len(data), 4096)], device)
    return vae, lg.finish(step)


@torch.no_grad()
def set_scaling_factor(vae: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    """Set ``vae.config.scaling_factor`` = 1/std of posterior means over ``images``."""
    zs = [vae.encode(images_to_tensor(images[i : i + 512], device)).latent_dist.mean for i in range(0, len(images), 512)]
    std = float(torch.cat(zs).float().std())
    sf = 1.0 / max(std, 1e-6)
    vae.register_to_config(scaling_factor=sf)
    log.info("vae latent std %.4f -> scaling_factor %.4f", std, sf)
    return sf


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """uint8 (N,64,64,3) -> scaled posterior-mean latents (N,4,16,16) float32 on ``device``."""
    sf = float(vae.config.scaling_factor)
    out = []
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i : i + batch], device)
        out.append(vae.encode(x).latent_dist.mean.float() * sf)
    return torch.cat(out)
