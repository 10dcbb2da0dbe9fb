"""What trains and how the student runs in training.

- ``add_up_lora``: a peft LoRA on the student UNet's up (decoder) blocks only.
- ``StudentForward``: the one-step path of inference, built from ``OneStepPipeline``'s own
  pieces (``noisy_input``, ``unet.encode``, ``apply_retrieval``, ``unet.decode``,
  ``predict_x0``), so training and serving cannot drift apart. The UNet encoder is frozen
  and carries no LoRA, so it runs without autograd; gradients reach the adapter and the
  decoder's LoRA only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from torch import nn

from engines.pipeline import OneStepPipeline

log = logging.getLogger(__name__)

DECODER_PREFIXES = ("up_blocks.", "conv_norm_out.", "conv_out.")
"""The decoder half of a diffusers UNet: what the regression objective trains in full."""


def lora_pattern(targets: Sequence[str]) -> str:
    """peft ``target_modules`` regex (full match) for ``targets`` inside ``up_blocks``."""
    if not targets:
        raise ValueError("lora_targets must not be empty when lora_rank > 0")
    alts = "|".join(re.escape(t) for t in targets)
    return rf"up_blocks\.\d+\..*\.({alts})"


def add_up_lora(unet: nn.Module, rank: int, alpha: float | None, targets: Sequence[str]) -> int:
    """Add a LoRA (adapter name ``default``) to the up blocks; returns its parameter count."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=lora_pattern(targets),
                     init_lora_weights=True)
    unet.add_adapter(cfg)  # type: ignore[operator]
    params = [(n, p) for n, p in unet.named_parameters() if "lora_" in n]
    if not params:
        raise ValueError(f"no up-block module matched lora_targets {list(targets)}")
    wrong = [n for n, _ in params if not n.startswith("up_blocks.")]
    if wrong:
        raise RuntimeError(f"LoRA leaked outside the up blocks: {wrong[:3]}")
    for _, p in params:
        p.requires_grad_(True)
    return sum(p.numel() for _, p in params)


def lora_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors (peft naming without the adapter name)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state(unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    res = set_peft_model_state_dict(unet, state)
    unexpected = getattr(res, "unexpected_keys", []) or []
    if unexpected:
        raise ValueError(f"LoRA state has keys the UNet lacks: {unexpected[:5]}")


class StudentForward(nn.Module):
    """noise (B,4,h,w), context (B,T,D), h_retr (B,k,C,h',w'), λ (B,k) -> x0 (B,4,h,w)."""

    def __init__(self, pipe: OneStepPipeline) -> None:
        super().__init__()
        self.pipe = pipe
        self.unet = pipe.unet  # HSplitUNet (registered so .parameters() sees the LoRA)
        self.hadapter = pipe.hadapter

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def forward(
        self,
        noise: torch.Tensor,
        context: torch.Tensor,
        h_retr: torch.Tensor,
        lam: torch.Tensor,
    ) -> torch.Tensor:
        pipe = self.pipe
        b = noise.shape[0]
        z = pipe.noisy_input(noise)
        t = torch.full((b,), pipe.student_timestep, device=z.device, dtype=torch.long)
        with torch.no_grad():
            h, skips, temb = pipe.unet.encode(z, t, context)
        h = pipe.apply_retrieval(h, ["adapter"] * b, h_retr, lam)
        out = pipe.unet.decode(h, skips, temb, context)
        return pipe.predict_x0(z, out)
