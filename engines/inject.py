"""Training-free H-space injection by spherical interpolation (docs/engines.md).

h = sin((1-w)Ω)/sinΩ · h_r + sin(wΩ)/sinΩ · h_t, Ω = arccos<ĥ_t, ĥ_r>, where w is the
weight of the target (0.8 by default) and the angle is taken between the flattened,
normalised vectors. Nearly parallel vectors fall back to linear interpolation.

``mix_retrieval`` is the per-sample choice every graph makes (the eager pipeline, the torch
graphs and the fast runner): H-adapter, slerp injection or nothing, by the batch's controls
tensor (``engines.request.CONTROLS``), so one graph serves mixed modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engines.request import control

if TYPE_CHECKING:
    from engines.hadapter import HAdapter


def slerp_inject(
    h_tgt: torch.Tensor, h_ret: torch.Tensor, w: float = 0.8, eps: float = 1e-6
) -> torch.Tensor:
    """h_tgt, h_ret (B,C,h,w) -> (B,C,h,w). ``w`` in [0,1] weighs the target."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"slerp weight w must be in [0, 1], got {w}")
    if h_tgt.shape != h_ret.shape:
        raise ValueError(f"shape mismatch: target {tuple(h_tgt.shape)} vs retrieved {tuple(h_ret.shape)}")
    b = h_tgt.shape[0]
    t = h_tgt.reshape(b, -1).float()
    r = h_ret.reshape(b, -1).float()
    cos = (t / t.norm(dim=1, keepdim=True).clamp_min(eps) * r / r.norm(dim=1, keepdim=True).clamp_min(eps)).sum(1)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    lin = so.abs() < 1e-4
    c_r = torch.where(lin, torch.full_like(so, 1 - w), torch.sin((1 - w) * omega) / so)
    c_t = torch.where(lin, torch.full_like(so, w), torch.sin(w * omega) / so)
    out = c_r[:, None] * r + c_t[:, None] * t
    return out.reshape(h_tgt.shape).to(h_tgt.dtype)


def mix_retrieval(
    h: torch.Tensor,
    h_retr: torch.Tensor,
    lam: torch.Tensor,
    controls: torch.Tensor,
    hadapter: HAdapter,
    inject_weight: float,
) -> torch.Tensor:
    """h (B,C,h,w), h_retr (B,k,C,h,w), lam (B,k), controls (B,n) -> h (B,C,h,w): the one blend.

    Per sample, by its ``controls`` (the columns of ``engines.request.CONTROLS``): the adapter
    where "adapter" > 0, slerp injection of neighbour 0 where "inject" > 0 and λ_0 > 0,
    else h unchanged (exactly: a sample never depends on its batch-mates' modes). Tensors
    only, no branches, so one captured graph serves any mix of modes.
    """
    ad = controls[:, control("adapter")].to(h.dtype)
    lam_ad = lam.to(h.dtype) * ad[:, None]
    h_ad = hadapter(h, h_retr.to(h.dtype), lam_ad)
    out = torch.where(ad[:, None, None, None] > 0, h_ad, h)
    inj = slerp_inject(h, h_retr[:, 0].to(h.dtype), inject_weight)
    use_inj = (controls[:, control("inject")] > 0) & (lam[:, 0] > 0)
    return torch.where(use_inj[:, None, None, None], inj, out)


def retrieval_on(controls: torch.Tensor) -> torch.Tensor:
    """(B,) float32: 1 where a sample's mode uses neighbours (adapter or inject)."""
    return ((controls[:, control("adapter")] + controls[:, control("inject")]) > 0).to(torch.float32)
