"""The optimised torch runner: one-step generation with retrieval as CUDA graphs per batch bucket.

Stages, each a pure tensor function (no host sync, so they can be captured):

- ``text``: token ids (B,77) int64 -> context (B,77,D), pooled (B,D)
- ``gather``: neighbour ids (B,k) int64 -> h_retr (B,k,C,h,w) from a GPU feature store (N,C,h,w)
- ``unet``: noise (B,4,L,L), context, h_retr, λ (B,k) -> x0 (B,4,L,L)
  (UNet encoder -> H-adapter -> UNet decoder -> x0; with ``retrieval=False`` the adapter
  and gather are skipped: that is the "retrieval off" pipeline of PERF.md)
- ``vae``: x0 -> uint8 images (B,R,R,3) on the device

Levers (docs/perf.md): half precision, channels-last, regional ``torch.compile``
(each repeated block compiled once: minutes less compile than a whole-model compile,
the same fusions inside blocks), sub-pixel VAE upsampling (engines.fast.subpixel) and,
on CUDA, one CUDA graph per batch bucket for the whole pipeline plus one per stage
(used only to time stages). On CPU everything runs eagerly (no graphs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engines.pipeline import OneStepPipeline

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("text", "retrieval", "unet", "vae")
COMPILE_MODES: tuple[str, ...] = ("none", "regional", "whole")


@dataclass
class FastConfig:
    """How the runner is built.

    compile: "regional" compiles each repeated block (ResnetBlock2D, Transformer2DModel,
      up/down samplers, the adapter) with Inductor; "whole" compiles the UNet encoder,
      the adapter, the UNet decoder (+ x0) and the VAE decode (+ uint8) as whole graphs
      (Inductor "default" mode: its fusions, our CUDA graphs; not yet measured on the
      GPU, docs/perf.md); "none" runs eagerly.
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


@dataclass
class _Bucket:
    batch: int
    retrieval: bool
    inputs: dict[str, torch.Tensor]
    graphs: dict[str, Any] = field(default_factory=dict)  # name -> torch.cuda.CUDAGraph
    outputs: dict[str, Any] = field(default_factory=dict)


def _regional_compile(root: nn.Module, classes: tuple[type, ...]) -> int:
    """Compile every submodule of ``root`` that is an instance of ``classes`` in place."""
    n = 0
    for m in root.modules():
        if isinstance(m, classes):
            m.compile(dynamic=None)
            n += 1
    return n


class FastRunner:
    """Optimised one-step pipeline over the modules of a ``OneStepPipeline``.

    Args:
        pipe: the pipeline whose modules are used (they are converted in place to the
            runner's memory format; the VAE decoder is copied if ``subpixel_vae``).
        feature_store: (N,C,h,w) retrieved-branch H-features on the pipe's device.
        k: neighbours per sample.
        retrieval: default for ``prepare``/``run``: gather + adapter (False: the plain
            pipeline with the same levers, PERF.md's "retrieval off").
    """

    def __init__(
        self,
        pipe: OneStepPipeline,
        feature_store: torch.Tensor,
        k: int,
        retrieval: bool = True,
        config: FastConfig | None = None,
    ) -> None:
        self.pipe = pipe
        self.cfg = config or FastConfig()
        if feature_store.ndim != 4 or tuple(feature_store.shape[1:]) != tuple(pipe.h_shape):
            raise ValueError(
                f"feature_store must be (N,{','.join(map(str, pipe.h_shape))}), "
                f"got {tuple(feature_store.shape)}"
            )
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.store = feature_store.to(pipe.device, pipe.dtype)
        self.k = k
        self.retrieval = retrieval
        self.device = pipe.device
        self.dtype = pipe.dtype
        self.use_graphs = self.cfg.cuda_graphs and self.device.type == "cuda"
        a = float(pipe.alphas_cumprod[pipe.student_timestep])
        self._sa, self._s1a = a**0.5, (1 - a) ** 0.5
        self._sf = float(pipe.vae.config.scaling_factor)
        self.buckets: dict[tuple[int, bool], _Bucket] = {}
        self.build_s = 0.0
        t0 = time.perf_counter()
        self._prepare_modules()
        self.build_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ setup
    def _prepare_modules(self) -> None:
        p = self.pipe
        self.decoder = p.vae.decoder
        self.post_quant_conv = p.vae.post_quant_conv
        self.subpixel_layers = 0
        if self.cfg.subpixel_vae:
            from engines.fast.subpixel import subpixel_decoder

            self.decoder, self.subpixel_layers = subpixel_decoder(p.vae.decoder)
            self.decoder.eval()
        if self.cfg.channels_last:
            p.unet.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        self.compiled_modules = 0
        self._unet_enc: Callable[..., Any] = self.pipe.unet.encode
        self._unet_dec: Callable[..., Any] = self._decode_x0
        self._vae_fn: Callable[..., Any] = self._vae_impl
        if self.cfg.compile == "regional":
            self.compiled_modules = self._compile_regional()
        elif self.cfg.compile == "whole":
            self.compiled_modules = self._compile_whole()
        log.info(
            "FastRunner: %s %s, compile=%s (%d modules), graphs=%s, subpixel=%d layers, retrieval=%s k=%d",
            self.device,
            self.dtype,
            self.cfg.compile,
            self.compiled_modules,
            self.use_graphs,
            self.subpixel_layers,
            self.retrieval,
            self.k,
        )

    def _compile_regional(self) -> int:
        import torch._dynamo
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
        from diffusers.models.attention_processor import Attention

        unet_classes = (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D)
        n = _regional_compile(self.pipe.unet, unet_classes)
        n += _regional_compile(
            self.decoder, (ResnetBlock2D, Attention, Upsample2D, SubpixelUpsample2D)
        )
        layer_cls = _clip_layer_class(self.pipe.text_encoder)
        if layer_cls is not None and self.cfg.compile_text:
            n += _regional_compile(self.pipe.text_encoder, (layer_cls,))
        self.pipe.hadapter.compile(dynamic=None)
        return n + 1

    def _compile_whole(self) -> int:
        self._unet_enc = torch.compile(self.pipe.unet.encode)
        self._unet_dec = torch.compile(self._decode_x0)
        self._vae_fn = torch.compile(self._vae_impl)
        self.pipe.hadapter.compile(dynamic=None)
        return 4

    # ------------------------------------------------------------------ stages
    def text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipe.text_encoder(ids)
        return out.last_hidden_state, out.pooler_output

    def gather(self, nbr: torch.Tensor) -> torch.Tensor:
        b, k = nbr.shape
        return self.store.index_select(0, nbr.reshape(-1)).reshape(b, k, *self.store.shape[1:])

    def unet(
        self, noise: torch.Tensor, ctx: torch.Tensor, h_retr: torch.Tensor | None, lam: torch.Tensor | None
    ) -> torch.Tensor:
        z = noise * self._s1a
        if self.cfg.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        t = torch.full((z.shape[0],), self.pipe.student_timestep, device=z.device, dtype=torch.long)
        ctx = ctx.to(self.dtype)
        h, skips, temb = self._unet_enc(z, t, ctx)
        if h_retr is not None and lam is not None:
            h = self.pipe.hadapter(h, h_retr, lam.to(self.dtype))
        return self._unet_dec(h, skips, temb, ctx, z)

    def _decode_x0(
        self, h: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor, ctx: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        out = self.pipe.unet.decode(h, skips, temb, ctx)
        # pipe.predict_x0 with the scalars cached as Python floats (no .item() in a graph)
        pt = self.pipe.prediction_type
        if pt == "epsilon":
            return (z - self._s1a * out) / self._sa
        if pt == "v_prediction":
            return self._sa * z - self._s1a * out
        return out

    def vae(self, x0: torch.Tensor) -> torch.Tensor:
        return self._vae_fn(x0)

    def _vae_impl(self, x0: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_conv(x0 / self._sf)
        img = self.decoder(z)
        img = ((img.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return img.permute(0, 2, 3, 1)

    def full(
        self,
        ids: torch.Tensor,
        noise: torch.Tensor,
        nbr: torch.Tensor,
        lam: torch.Tensor,
        retrieval: bool = True,
    ) -> torch.Tensor:
        """The whole pipeline: token ids, noise, neighbour ids, λ -> uint8 (B,R,R,3)."""
        ctx, _ = self.text(ids)
        h_retr = self.gather(nbr) if retrieval else None
        x0 = self.unet(noise, ctx, h_retr, lam)
        return self.vae(x0)

    # ------------------------------------------------------------------ buckets
    def example_inputs(self, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random but valid inputs for a batch (token ids, noise, neighbour ids, λ)."""
        g = torch.Generator().manual_seed(seed)
        vocab = int(self.pipe.text_encoder.config.vocab_size)
        ids = torch.randint(0, vocab - 2, (batch, self.pipe.max_length), generator=g)
        ids[:, -1] = int(self.pipe.text_encoder.config.eos_token_id)
        c, lsz = self.pipe.latent_channels, self.pipe.latent_size
        noise = torch.randn((batch, c, lsz, lsz), generator=g)
        nbr = torch.randint(0, self.store.shape[0], (batch, self.k), generator=g)
        lam = torch.rand((batch, self.k), generator=g) * 0.5 + 0.5
        return {
            "ids": ids.to(self.device),
            "noise": noise.to(self.device, self.dtype),
            "nbr": nbr.to(self.device),
            "lam": lam.to(self.device, self.dtype),
        }

    def _stage_fns(self, x: dict[str, torch.Tensor], retrieval: bool) -> dict[str, Callable[[], Any]]:
        """Closures over a bucket's static inputs; intermediates come from one eager pass."""
        with torch.inference_mode():
            ctx, _ = self.text(x["ids"])
            h_retr = self.gather(x["nbr"]) if retrieval else None
            x0 = self.unet(x["noise"], ctx, h_retr, x["lam"])
        fns: dict[str, Callable[[], Any]] = {
            "text": lambda: self.text(x["ids"]),
            "unet": lambda: self.unet(x["noise"], ctx, h_retr, x["lam"]),
            "vae": lambda: self.vae(x0),
            "full": lambda: self.full(x["ids"], x["noise"], x["nbr"], x["lam"], retrieval),
        }
        if retrieval:
            fns["retrieval"] = lambda: self.gather(x["nbr"])
        return fns

    def prepare(self, batch: int, retrieval: bool | None = None, seed: int = 0) -> float:
        """Warm up (compiles on first use) and capture graphs for ``batch``; returns seconds."""
        retrieval = self.retrieval if retrieval is None else retrieval
        t0 = time.perf_counter()
        x = self.example_inputs(batch, seed)
        bucket = _Bucket(batch=batch, retrieval=retrieval, inputs=x)
        with torch.inference_mode():
            fns = self._stage_fns(x, retrieval)
            if self.use_graphs:
                s = torch.cuda.Stream(self.device)
                s.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(s):
                    for _ in range(2):
                        for fn in fns.values():
                            fn()
                torch.cuda.current_stream(self.device).wait_stream(s)
                torch.cuda.synchronize(self.device)
                for name, fn in fns.items():
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        bucket.outputs[name] = fn()
                    bucket.graphs[name] = g
                torch.cuda.synchronize(self.device)
            else:
                for fn in fns.values():
                    fn()
                bucket.graphs = {name: fn for name, fn in fns.items()}
        self.buckets[(batch, retrieval)] = bucket
        dt = time.perf_counter() - t0
        self.build_s += dt
        log.info("FastRunner: bucket %d (retrieval=%s) ready in %.1f s", batch, retrieval, dt)
        return dt

    def stage_callable(self, batch: int, name: str, retrieval: bool | None = None) -> Callable[[], Any]:
        """A zero-argument callable running one stage (or "full") on the bucket's inputs."""
        retrieval = self.retrieval if retrieval is None else retrieval
        b = self.buckets[(batch, retrieval)]
        g = b.graphs[name]
        return g.replay if self.use_graphs else g

    def release(self) -> None:
        """Drop all captured graphs and their memory pools."""
        self.buckets.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def run(
        self, ids: torch.Tensor, noise: torch.Tensor, nbr: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        """Generate uint8 images (B,R,R,3) on the device; uses the bucket's graph when one
        was prepared for exactly this batch, else runs the stages directly."""
        b = int(ids.shape[0])
        bucket = self.buckets.get((b, self.retrieval))
        if bucket is None or not self.use_graphs:
            return self.full(
                ids.to(self.device),
                noise.to(self.device, self.dtype),
                nbr.to(self.device),
                lam.to(self.device, self.dtype),
                self.retrieval,
            )
        x = bucket.inputs
        x["ids"].copy_(ids)
        x["noise"].copy_(noise)
        x["nbr"].copy_(nbr)
        x["lam"].copy_(lam)
        bucket.graphs["full"].replay()
        return bucket.outputs["full"].clone()


def _clip_layer_class(text_encoder: nn.Module) -> type | None:
    for m in text_encoder.modules():
        if type(m).__name__.endswith("EncoderLayer"):
            return type(m)
    return None
