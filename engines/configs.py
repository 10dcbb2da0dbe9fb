"""Model configurations written in code (no download).

``sd-turbo`` mirrors the shapes of stabilityai/sd-turbo (SD 2.1-base architecture,
512x512, latent 64x64x4, OpenCLIP ViT-H text encoder with 23 layers, H-space
1280x8x8). Random weights of these shapes measure SD-Turbo's speed. ``tiny`` is a
few-hundred-kilobyte family for CPU tests (64x64 images, latent 8x8x4, H 64x4x4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Arch = Literal["sd-turbo", "tiny"]


@dataclass(frozen=True)
class ArchConfig:
    """Configs of every component of one model family (diffusers/transformers kwargs)."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    hadapter: dict[str, Any]
    ragturbo: dict[str, Any] = field(default_factory=dict)


SD_TURBO_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}


def sd_turbo() -> ArchConfig:
    """SD-Turbo-shaped configs (random weights for speed work)."""
    unet = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "norm_num_groups": 32,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    text = {
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }
    hadapter = {"channels": 1280, "num_heads": 20, "ff_mult": 4}
    return ArchConfig(
        name="sd-turbo",
        unet=unet,
        vae=vae,
        text_encoder=text,
        scheduler=dict(SD_TURBO_SCHEDULER),
        hadapter=hadapter,
        ragturbo={"student_timestep": 999, "resolution": 512},
    )


def tiny(vocab_size: int = 782, bos: int = 780, eos: int = 781) -> ArchConfig:
    """A tiny family for CPU tests: 64x64 images, 8x8x4 latents, H-space 64x4x4."""
    unet = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
        "use_linear_projection": True,
        "norm_num_groups": 8,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [16, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": 1.0,
    }
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 32,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    hadapter = {"channels": 64, "num_heads": 4, "ff_mult": 2}
    return ArchConfig(
        name="tiny",
        unet=unet,
        vae=vae,
        text_encoder=text,
        scheduler=dict(SD_TURBO_SCHEDULER),
        hadapter=hadapter,
        ragturbo={"student_timestep": 999, "resolution": 64},
    )


def get_arch(name: str) -> ArchConfig:
    """Configs by name; raises ValueError naming the valid choices."""
    if name == "sd-turbo":
        return sd_turbo()
    if name == "tiny":
        return tiny()
    raise ValueError(f"unknown arch {name!r}; choose one of 'sd-turbo', 'tiny'")
