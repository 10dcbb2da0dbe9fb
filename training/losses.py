"""Reconstruction losses on latents: smooth-L1 and the latent perceptual ("LPIPS") loss.

The perceptual loss compares the frozen teacher encoder's multi-scale features (every down
block and the mid block, at t = 0 with the caption as context) of the student's x0 and of
the target latent, both under the *same* random differentiable augmentation (flip,
sub-pixel translation, cutout). As in LPIPS, each feature vector is unit-normalised over
channels and the squared distances are averaged over positions and stages (no learned
per-channel weights: nothing trains on human judgements here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.discriminator import TeacherFeatures


@dataclass
class Augment:
    """One random augmentation, applied identically to several latents (B,C,H,W)."""

    theta: torch.Tensor  # (B,2,3) affine grid parameters
    mask: torch.Tensor | None  # (B,1,H,W) cutout mask (1 keep, 0 cut)

    @classmethod
    def draw(
        cls,
        b: int,
        hw: tuple[int, int],
        gen: torch.Generator,
        translate: float = 0.125,
        cutout: float = 0.25,
        flip: bool = True,
    ) -> Augment:
        sx = torch.ones(b)
        if flip:
            sx = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        t = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 * translate)  # grid units span 2
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = sx
        theta[:, 1, 1] = 1.0
        theta[:, :, 2] = t
        mask = None
        if cutout > 0:
            h, w = hw
            ch, cw = max(1, round(h * cutout)), max(1, round(w * cutout))
            y0 = torch.randint(0, h - ch + 1, (b,), generator=gen)
            x0 = torch.randint(0, w - cw + 1, (b,), generator=gen)
            ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
            cut = ((ys >= y0[:, None, None]) & (ys < (y0 + ch)[:, None, None])
                   & (xs >= x0[:, None, None]) & (xs < (x0 + cw)[:, None, None]))
            mask = (~cut).float()[:, None]
        return cls(theta=theta, mask=mask)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.theta.to(z.device, z.dtype)
        grid = F.affine_grid(theta, list(z.shape), align_corners=False)
        out = F.grid_sample(z, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.mask is not None:
            out = out * self.mask.to(z.device, z.dtype)
        return out


def _unit(f: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    f = f.float()
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


def latent_perceptual_loss(
    feats: TeacherFeatures,
    x0_hat: torch.Tensor,
    z0: torch.Tensor,
    context: torch.Tensor,
    aug: Augment,
) -> torch.Tensor:
    """Mean over stages of E_pos ||unit(φ(aug(ẑ0))) - unit(φ(aug(z0)))||² (gradient to ẑ0 only)."""
    t = torch.zeros(x0_hat.shape[0], device=x0_hat.device, dtype=torch.long)
    fh, _ = feats(aug(x0_hat), t, context)
    with torch.no_grad():
        fr, _ = feats(aug(z0), t, context)
    terms = [(_unit(a) - _unit(b)).pow(2).sum(1).mean() for a, b in zip(fh, fr, strict=True)]
    return torch.stack(terms).mean()


def smooth_l1(x0_hat: torch.Tensor, z0: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return F.smooth_l1_loss(x0_hat.float(), z0.float(), beta=beta)
