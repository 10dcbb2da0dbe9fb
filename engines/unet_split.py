"""The UNet split at H-space (its bottleneck, the mid-block output).

``encode`` runs time embedding, ``conv_in``, the down blocks and the mid block and
returns ``(h, skips, temb)``; ``decode`` runs the up blocks on ``h`` with the
target's own skips. ``decode(*encode(z, t, c), c)`` equals
``UNet2DConditionModel.forward(z, t, c)`` for the plain text-conditioned case
(no class/added conditioning, no ControlNet/T2I residuals), which is what SD 2.1
and SD-Turbo use. Works on tensors only; knows nothing of retrieval.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

Skips = tuple[torch.Tensor, ...]


class HSplitUNet(nn.Module):
    """Wraps a diffusers ``UNet2DConditionModel`` and exposes it in two halves."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        cfg = unet.config
        unsupported = {
            "class_embed_type": cfg.class_embed_type,
            "addition_embed_type": cfg.addition_embed_type,
            "encoder_hid_dim_type": cfg.encoder_hid_dim_type,
        }
        bad = {k: v for k, v in unsupported.items() if v is not None}
        if bad:
            raise ValueError(f"HSplitUNet supports plain text-conditioned UNets only; got {bad}")
        if cfg.center_input_sample:
            raise ValueError("HSplitUNet does not support center_input_sample=True")
        self.unet = unet

    @property
    def h_channels(self) -> int:
        return int(self.unet.config.block_out_channels[-1])

    def h_shape(self, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of H-space for a latent of spatial size ``latent_hw``."""
        f = 2 ** (len(self.unet.config.block_out_channels) - 1)
        return (self.h_channels, latent_hw[0] // f, latent_hw[1] // f)

    def encode(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, Skips, torch.Tensor]:
        """sample (B,4,H,W), timestep () or (B,), context (B,T,D) -> h (B,C,h,w), skips, temb."""
        u = self.unet
        for dim in sample.shape[-2:]:
            if dim % (2**u.num_upsamplers) != 0:
                raise ValueError(
                    f"latent size {tuple(sample.shape[-2:])} must be divisible by "
                    f"{2**u.num_upsamplers}"
                )
        t_emb = u.get_time_embed(sample=sample, timestep=timestep)
        emb = u.time_embedding(t_emb, None)
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        x = u.conv_in(sample)
        skips: Skips = (x,)
        for block in u.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context)
            else:
                x, res = block(hidden_states=x, temb=emb)
            skips += res
        if u.mid_block is not None:
            if getattr(u.mid_block, "has_cross_attention", False):
                x = u.mid_block(x, emb, encoder_hidden_states=context)
            else:
                x = u.mid_block(x, emb)
        return x, skips, emb

    def decode(
        self, h: torch.Tensor, skips: Skips, temb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """h (B,C,h,w), skips, temb (B,E), context (B,T,D) -> model output (B,4,H,W)."""
        u = self.unet
        x = h
        rest = skips
        for block in u.up_blocks:
            n = len(block.resnets)
            res, rest = rest[-n:], rest[:-n]
            if getattr(block, "has_cross_attention", False):
                x = block(
                    hidden_states=x,
                    temb=temb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=context,
                )
            else:
                x = block(hidden_states=x, temb=temb, res_hidden_states_tuple=res)
        if u.conv_norm_out is not None:
            x = u.conv_act(u.conv_norm_out(x))
        return u.conv_out(x)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        h, skips, temb = self.encode(sample, timestep, context)
        return self.decode(h, skips, temb, context)
