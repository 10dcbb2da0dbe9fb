"""How the fast runner is built: its configuration and the regional ``torch.compile`` lever."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

COMPILE_MODES: tuple[str, ...] = ("none", "regional", "whole")


@dataclass
class FastConfig:
    """How the runner is built.

    compile: "whole" compiles the UNet encoder, the adapter, the UNet decoder (+ x0) and the
      VAE decode (+ uint8) as whole graphs (Inductor "default" mode: its fusions, our CUDA
      graphs); "regional" compiles each repeated block (ResnetBlock2D, Transformer2DModel,
      up/down samplers, the adapter); "none" runs eagerly.
    cuda_graphs: capture one graph per batch bucket (CUDA only).
    subpixel_vae: compute the VAE's nearest-×2 + 3x3 conv upsamplers at low resolution.
    channels_last: NHWC activations for the convolutional parts.
    compile_text: also compile the CLIP layers. Off by default: transformers builds a
      different attention mask while a CUDA stream is capturing, so a compiled CLIP layer
      meets new inputs inside the capture and recompiles there, which capture forbids
      (seen on the H100, torch 2.11 + transformers 5.17). The text encoder then runs as
      eager kernels inside the graph.
    """

    compile: str = "whole"
    cuda_graphs: bool = True
    subpixel_vae: bool = True
    channels_last: bool = True
    compile_text: bool = False

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")


def _regional_compile(root: nn.Module, classes: tuple[type, ...]) -> int:
    """Compile every submodule of ``root`` that is an instance of ``classes`` in place."""
    n = 0
    for m in root.modules():
        if isinstance(m, classes):
            m.compile(dynamic=None)
            n += 1
    return n


def _clip_layer_class(text_encoder: nn.Module) -> type | None:
    for m in text_encoder.modules():
        if type(m).__name__.endswith("EncoderLayer"):
            return type(m)
    return None


def compile_regional(
    unet: nn.Module, decoder: nn.Module, text_encoder: nn.Module, hadapter: nn.Module, compile_text: bool
) -> int:
    """Compile every repeated block in place (UNet resnets, transformers and samplers; the VAE
    decoder's resnets, attention and upsamplers; the CLIP layers if ``compile_text``; the
    adapter); returns how many modules were compiled."""
    import torch._dynamo
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    from engines.fast.subpixel import SubpixelUpsample2D

    # Each block class meets several shapes; automatic dynamic shapes keeps the count low.
    dc = torch._dynamo.config
    for name, floor in (("recompile_limit", 64), ("cache_size_limit", 64),
                        ("accumulated_recompile_limit", 4096), ("accumulated_cache_size_limit", 4096)):
        if hasattr(dc, name):
            setattr(dc, name, max(getattr(dc, name), floor))
    n = _regional_compile(unet, (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D))
    n += _regional_compile(decoder, (ResnetBlock2D, Attention, Upsample2D, SubpixelUpsample2D))
    layer_cls = _clip_layer_class(text_encoder)
    if layer_cls is not None and compile_text:
        n += _regional_compile(text_encoder, (layer_cls,))
    hadapter.compile(dynamic=None)
    return n + 1
