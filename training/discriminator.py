"""The latent discriminator (LADD-style) and the latent perceptual features.

``TeacherFeatures`` runs the frozen teacher UNet encoder (``HSplitUNet.encode``) and
collects the output of every down block and of the mid block through forward hooks:
multi-scale features of a (noisy) latent, conditioned on the caption through the
teacher's own cross-attention and on the timestep through its time embedding.

``DiscHeads``: one spectral-normalised conv head per chosen stage, each giving a logit map
(B,1,h,w); conditioning enters as a projection term <φ(feat), W_c·pooled + W_t·temb>
(projection discriminator), so the heads see the prompt and the timestep explicitly too.
Only the heads train; gradients flow through the frozen teacher into the student's x0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from engines.unet_split import HSplitUNet


class TeacherFeatures:
    """Frozen teacher encoder -> list of stage features (down blocks..., mid) and temb (B,E)."""

    def __init__(self, teacher: HSplitUNet) -> None:
        self.teacher = teacher
        u = teacher.unet
        self.blocks: list[nn.Module] = list(u.down_blocks) + ([u.mid_block] if u.mid_block else [])
        self._out: list[torch.Tensor | None] = [None] * len(self.blocks)
        for i, blk in enumerate(self.blocks):
            blk.register_forward_hook(self._hook(i))

    def _hook(self, i: int):
        def fn(_m: nn.Module, _inp: object, out: object) -> None:
            self._out[i] = out[0] if isinstance(out, tuple) else out  # type: ignore[assignment]

        return fn

    @property
    def stage_channels(self) -> list[int]:
        u = self.teacher.unet
        chans = list(u.config.block_out_channels)
        return chans + ([chans[-1]] if u.mid_block is not None else [])

    @property
    def temb_dim(self) -> int:
        return int(self.teacher.unet.time_embedding.linear_2.out_features)

    def __call__(
        self, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """z (B,4,H,W), t (B,), context (B,T,D) -> [stage features (B,C_i,h_i,w_i)], temb (B,E)."""
        self._out = [None] * len(self.blocks)
        _, _, temb = self.teacher.encode(z, t, context)
        feats = [f for f in self._out if f is not None]
        if len(feats) != len(self.blocks):
            raise RuntimeError("teacher encoder hooks did not fire for every stage")
        return feats, temb


class _Head(nn.Module):
    def __init__(self, in_ch: int, hidden: int, cond_dim: int, temb_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(in_ch, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(hidden, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
        )
        self.out = spectral_norm(nn.Conv2d(hidden, 1, 1))
        self.cond = nn.Linear(cond_dim, hidden)
        self.tcond = nn.Linear(temb_dim, hidden)
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, f: torch.Tensor, pooled: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.body(f)
        c = self.cond(pooled.to(x.dtype)) + self.tcond(temb.to(x.dtype))  # (B,hidden)
        return self.out(x) + self.scale * (x * c[:, :, None, None]).sum(1, keepdim=True)


class DiscHeads(nn.Module):
    """Spectral-normalised heads over teacher stages ``stages`` (indices into the stage list).

    forward(feats, pooled (B,D), temb (B,E)) -> list of logit maps (B,1,h_i,w_i).
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        cond_dim: int,
        temb_dim: int,
        hidden: int = 64,
        stages: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        n = len(stage_channels)
        self.stages = list(range(n)) if stages is None else [int(s) for s in stages]
        bad = [s for s in self.stages if not 0 <= s < n]
        if bad or not self.stages:
            raise ValueError(f"disc_stages {self.stages} must be non-empty indices in [0,{n})")
        self.heads = nn.ModuleList(
            [_Head(stage_channels[s], hidden, cond_dim, temb_dim) for s in self.stages]
        )

    def forward(
        self, feats: Sequence[torch.Tensor], pooled: torch.Tensor, temb: torch.Tensor
    ) -> list[torch.Tensor]:
        return [h(feats[s], pooled, temb) for s, h in zip(self.stages, self.heads, strict=True)]


def hinge_d_loss(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean over heads of E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))]."""
    terms = [F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean over heads of E[-D(fake)]."""
    return torch.stack([-f.float().mean() for f in fake]).mean()
