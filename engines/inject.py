"""Training-free H-space injection by spherical interpolation (docs/engines.md).

h = sin((1-w)Ω)/sinΩ · h_r + sin(wΩ)/sinΩ · h_t, Ω = arccos<ĥ_t, ĥ_r>, where w is the
weight of the target (0.8 by default) and the angle is taken between the flattened,
normalised vectors. Nearly parallel vectors fall back to linear interpolation.
"""

from __future__ import annotations

import torch


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
