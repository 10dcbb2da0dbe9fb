"""The exported graphs as torch modules: text encoder, UNet with H-adapter, VAE decoder.

These wrappers are what ONNX export traces and what the optimised torch backend
compiles, so every runtime runs the same computation. Retrieval selection is by
tensors, not Python branches, so one graph serves a batch that mixes modes:

``controls`` (B, n) float, one column per ``engines.request.CONTROLS`` entry: "adapter" 1
where the sample uses the H-adapter, "inject" 1 where it uses slerp injection of neighbour 0
(only when its λ_0 > 0); both 0: mode off (h is left exactly as the UNet encoder produced it).

The UNet graph outputs the model output (ε for SD-Turbo), not x0; x0 is one
element-wise step on the host (``OneStepPipeline.predict_x0``), which keeps the
graph independent of the student timestep. The VAE graph takes x0 latents and
returns the decoder sample in [-1, 1] as float (B,3,H,W); uint8 is made on the host.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.hadapter import HAdapter
from engines.inject import mix_retrieval
from engines.rules import images_to_uint8
from engines.unet_split import HSplitUNet

__all__ = ["TextEncoderGraph", "UNetGraph", "VaeDecoderGraph", "images_to_uint8"]


class TextEncoderGraph(nn.Module):
    """input_ids (B,T) int64 -> context (B,T,D), pooled (B,D)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetGraph(nn.Module):
    """UNet encoder -> retrieval mix -> UNet decoder.

    sample (B,4,h,w) (the noisy input at the student timestep), timestep (B,) float32,
    context (B,T,D), h_retr (B,k,C,h',w'), lam (B,k), controls (B,n) -> model_output (B,4,h,w).
    """

    def __init__(self, unet: HSplitUNet, hadapter: HAdapter, inject_weight: float) -> None:
        super().__init__()
        self.unet = unet
        self.hadapter = hadapter
        self.inject_weight = float(inject_weight)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        h_retr: torch.Tensor,
        lam: torch.Tensor,
        controls: torch.Tensor,
    ) -> torch.Tensor:
        h, skips, temb = self.unet.encode(sample, timestep, context)
        h = mix_retrieval(h, h_retr, lam, controls, self.hadapter, self.inject_weight)
        return self.unet.decode(h, skips, temb, context)


class VaeDecoderGraph(nn.Module):
    """latent x0 (B,4,h,w) -> image (B,3,H,W) float in about [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scale).sample
