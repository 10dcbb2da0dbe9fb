"""The serving engine's core: one-step generation with retrieval as CUDA graphs per batch bucket.

Stages, each a pure tensor function (no host sync, so they can be captured):

- ``text``: token ids (B,77) int64 -> context (B,77,D), pooled (B,D)
- ``retrieve``: pooled, kmask (B,K), controls (B,N) -> exact cosine top-K over the
  ``GpuIndex`` (rows, scores), λ = score where score >= min_score and > 0 (else 0), masked
  by each request's k and mode, and the gather of the rows' H-features (B,K,C,h,w)
- ``unet``: noise (B,4,L,L), context, h_retr, λ, controls -> x0 (B,4,L,L)
  (UNet encoder -> adapter / slerp injection / nothing per sample -> UNet decoder -> x0)
- ``vae``: x0 -> uint8 images (B,R,R,3) on the device

Variants, each one static-shape graph per batch bucket:

- ``search``: token ids, noise, kmask, controls -> images, rows, scores (the served path:
  text, search, gather, UNet, VAE in one graph)
- ``given``: context, noise, h_retr, λ, controls -> images (neighbours found elsewhere, e.g. a
  Qdrant cluster when the database outgrows the device)
- ``text``: token ids -> context, pooled (the text encoder alone, for the ``given`` path)
- ``plain``: token ids, noise -> images (no retrieval at all: the overhead baseline)

Levers (docs/perf.md): half precision, channels-last, ``torch.compile`` ("whole": the UNet
halves and the VAE decode as whole Inductor graphs; "regional": each repeated block),
sub-pixel VAE upsampling (engines.fast.subpixel) and, on CUDA, one CUDA graph per bucket.
On CPU everything runs eagerly (no graphs); that is what the CPU tests exercise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.cuda_graphs import as_tuple, capture_graphs, replayer
from engines.fast.compile import FastConfig, compile_regional
from engines.fast.gpu_index import GpuIndex
from engines.inject import mix_retrieval, retrieval_on
from engines.pipeline import OneStepPipeline
from engines.request import Batch, ImageRequest
from engines.rules import images_to_uint8, neighbour_lambda, start_latent, x0_from_output

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("text", "retrieval", "unet", "vae")
VARIANTS: tuple[str, ...] = ("search", "given", "text", "plain")
_INPUTS: dict[str, tuple[str, ...]] = {
    "search": ("ids", "noise", "kmask", "ctrl"),
    "given": ("ctx", "noise", "h_retr", "lam", "ctrl"),
    "text": ("ids",),
    "plain": ("ids", "noise"),
}


@dataclass
class _Bucket:
    batch: int
    variant: str
    inputs: dict[str, torch.Tensor]
    # engines.cuda_graphs.capture_graphs: name -> CUDAGraph (or eager fn), static outputs
    graphs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    # The stage closures and the eager intermediates they read: a stage graph replays
    # into those addresses, so they must live as long as the stage graphs do.
    keep: dict[str, Any] = field(default_factory=dict)


class FastRunner:
    """Optimised one-step pipeline over the modules of a ``OneStepPipeline``.

    Args:
        pipe: the pipeline whose modules are used (converted in place to the runner's memory
            format; the VAE decoder is copied if ``subpixel_vae``).
        k_max: most neighbours per sample; a graph is captured per (batch, K) bucket and a
            request's k <= K is a mask.
        index: the device copy of the database searched by the ``search`` variant.
        inject_weight: slerp weight of the target for mode "inject".
    """

    def __init__(
        self,
        pipe: OneStepPipeline,
        k_max: int,
        config: FastConfig | None = None,
        index: GpuIndex | None = None,
        inject_weight: float = 0.8,
    ) -> None:
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        self.pipe = pipe
        self.cfg = config or FastConfig()
        self.k = int(k_max)
        self.device = pipe.device
        self.dtype = pipe.dtype
        self.inject_weight = float(inject_weight)
        self.use_graphs = self.cfg.cuda_graphs and self.device.type == "cuda"
        self._alpha_bar = float(pipe.alphas_cumprod[pipe.student_timestep])
        self._sf = float(pipe.vae.config.scaling_factor)
        self.min_score = torch.zeros((), dtype=torch.float32, device=self.device)
        self.index: GpuIndex | None = None
        self.buckets: dict[tuple[int, str, int], _Bucket] = {}
        # One memory pool for every captured graph: they never run concurrently and each
        # replay's outputs are cloned at once, so buckets share their activation memory.
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.build_s = 0.0
        t0 = time.perf_counter()
        self._prepare_modules()
        if index is not None:
            self.set_index(index)
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
            self.compiled_modules = compile_regional(
                p.unet, self.decoder, p.text_encoder, p.hadapter, self.cfg.compile_text)
        elif self.cfg.compile == "whole":  # whole Inductor graphs inside our CUDA graphs
            self._unet_enc = torch.compile(p.unet.encode)
            self._unet_dec = torch.compile(self._decode_x0)
            self._vae_fn = torch.compile(self._vae_impl)
            p.hadapter.compile(dynamic=None)
            self.compiled_modules = 4
        log.info(
            "FastRunner: %s %s, compile=%s (%d modules), graphs=%s, subpixel=%d layers, k_max=%d",
            self.device, self.dtype, self.cfg.compile, self.compiled_modules, self.use_graphs,
            self.subpixel_layers, self.k,
        )

    def set_index(self, index: GpuIndex) -> None:
        """Use ``index`` for the ``search`` variant; graphs captured over another index go."""
        if index.device != self.device:
            raise ValueError(f"index is on {index.device}, runner on {self.device}")
        if tuple(index.h_shape) != tuple(self.pipe.h_shape) or index.dim != self.pipe.embed_dim:
            raise ValueError(
                f"index rows are ({index.dim}) + {index.h_shape}, the model gives "
                f"({self.pipe.embed_dim}) + {tuple(self.pipe.h_shape)}"
            )
        if index.capacity < self.k:
            raise ValueError(f"index capacity {index.capacity} < k_max {self.k}")
        if self.index is not index:
            self.drop("search")
        self.index = index

    def set_min_score(self, value: float) -> None:
        """λ is 0 below this cosine (a device scalar, so graphs need no re-capture)."""
        self.min_score.fill_(float(value))

    # ------------------------------------------------------------------ stages
    def text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipe.text_encoder(ids)
        return out.last_hidden_state, out.pooler_output

    def retrieve(
        self, pooled: torch.Tensor, kmask: torch.Tensor, ctrl: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> h_retr (B,K,C,h,w), λ (B,K), scores (B,K) float32, rows (B,K) int64 (K from kmask)."""
        if self.index is None:
            raise RuntimeError("the search variant needs an index (set_index)")
        scores, rows = self.index.search(pooled, int(kmask.shape[1]))
        lam = neighbour_lambda(scores, self.min_score) * kmask.float() * retrieval_on(ctrl)[:, None]
        return self.index.gather(rows), lam, scores, rows

    def unet(
        self,
        noise: torch.Tensor,
        ctx: torch.Tensor,
        h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
        ctrl: torch.Tensor | None = None,
    ) -> torch.Tensor:
        z = start_latent(noise, self._alpha_bar)
        if self.cfg.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        t = torch.full((z.shape[0],), self.pipe.student_timestep, device=z.device, dtype=torch.long)
        ctx = ctx.to(self.dtype)
        h, skips, temb = self._unet_enc(z, t, ctx)
        if h_retr is not None and lam is not None and ctrl is not None:
            h = mix_retrieval(h, h_retr.to(self.dtype), lam, ctrl, self.pipe.hadapter, self.inject_weight)
        return self._unet_dec(h, skips, temb, ctx, z)

    def _decode_x0(
        self, h: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor, ctx: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        out = self.pipe.unet.decode(h, skips, temb, ctx)
        # ᾱ as a Python float: no .item() inside a captured graph
        return x0_from_output(z, out, self._alpha_bar, self.pipe.prediction_type)

    def vae(self, x0: torch.Tensor) -> torch.Tensor:
        return self._vae_fn(x0)

    def _vae_impl(self, x0: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_conv(x0 / self._sf)
        return images_to_uint8(self.decoder(z))

    # ------------------------------------------------------------------ whole variants
    def full_search(
        self, ids: torch.Tensor, noise: torch.Tensor, kmask: torch.Tensor, ctrl: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids ... -> uint8 images (B,R,R,3), rows (B,K), scores (B,K)."""
        ctx, pooled = self.text(ids)
        h_retr, lam, scores, rows = self.retrieve(pooled, kmask, ctrl)
        img = self.vae(self.unet(noise, ctx, h_retr, lam, ctrl))
        return img, rows, scores

    def full_given(
        self, ctx: torch.Tensor, noise: torch.Tensor, h_retr: torch.Tensor, lam: torch.Tensor,
        ctrl: torch.Tensor,
    ) -> torch.Tensor:
        return self.vae(self.unet(noise, ctx, h_retr, lam, ctrl))

    def full_plain(self, ids: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ctx, _ = self.text(ids)
        return self.vae(self.unet(noise, ctx))

    def _full(self, variant: str) -> Callable[..., Any]:
        return {"search": self.full_search, "given": self.full_given, "text": self.text,
                "plain": self.full_plain}[variant]

    # ------------------------------------------------------------------ buckets
    def example_inputs(
        self, batch: int, variant: str = "search", k: int | None = None, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Random but valid static inputs of ``variant`` for a batch with K = ``k`` (k_max)."""
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in 1..{self.k}, got {k}")
        g = torch.Generator().manual_seed(seed)
        p = self.pipe
        vocab = int(p.text_encoder.config.vocab_size)
        ids = torch.randint(0, vocab - 2, (batch, p.max_length), generator=g)
        ids[:, -1] = int(p.text_encoder.config.eos_token_id)
        c, lsz = p.latent_channels, p.latent_size
        x: dict[str, torch.Tensor] = {
            "ids": ids,
            "noise": torch.randn((batch, c, lsz, lsz), generator=g),
            "kmask": torch.ones((batch, k)),
            "ctrl": Batch(tuple(ImageRequest("", 0) for _ in range(batch))).controls(),  # adapter
            "ctx": torch.randn((batch, p.max_length, p.embed_dim), generator=g),
            "h_retr": torch.randn((batch, k, *p.h_shape), generator=g),
            "lam": torch.rand((batch, k), generator=g) * 0.5 + 0.5,
        }
        out = {}
        for n in _INPUTS[variant]:
            t = x[n].to(self.device)
            out[n] = t.to(self.dtype) if n in ("noise", "ctx", "h_retr") else t
        return out

    def _stage_fns(self, variant: str, x: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
        """Closures over a bucket's static inputs; stage inputs come from one eager pass."""
        fns: dict[str, Callable[[], Any]] = {"full": lambda: self._full(variant)(*x.values())}
        if variant != "search":
            return fns
        with torch.inference_mode():
            ctx, pooled = self.text(x["ids"])
            hr, lam, _, _ = self.retrieve(pooled, x["kmask"], x["ctrl"])
            x0 = self.unet(x["noise"], ctx, hr, lam, x["ctrl"])
        fns.update(
            text=lambda: self.text(x["ids"]),
            retrieval=lambda: self.retrieve(pooled, x["kmask"], x["ctrl"]),
            unet=lambda: self.unet(x["noise"], ctx, hr, lam, x["ctrl"]),
            vae=lambda: self.vae(x0),
        )
        return fns

    def prepare(
        self, batch: int, variant: str = "search", stages: bool = False, seed: int = 0,
        k: int | None = None,
    ) -> float:
        """Warm up (compiles on first use) and capture the graph(s) of ``variant`` for
        ``batch`` and K = ``k``; with ``stages`` also one graph per stage (search variant),
        whose replay times are kept in ``stage_ms``. Returns seconds."""
        t0 = time.perf_counter()
        x = self.example_inputs(batch, variant, k, seed)
        bucket = _Bucket(batch=batch, variant=variant, inputs=x)
        with torch.inference_mode():
            fns = self._stage_fns(variant, x)
            if not stages:
                fns = {"full": fns["full"]}
            bucket.graphs, bucket.outputs = capture_graphs(
                fns, self.device, enabled=self.use_graphs, pool=self._pool, warmup=2
            )
        bucket.keep = fns
        if stages:
            with torch.inference_mode():  # as the capture: weights that track gradients are fine
                bucket.stage_ms = self._time_stages(bucket)
        key = self._key(variant, x)
        self.buckets[key] = bucket
        dt = time.perf_counter() - t0
        self.build_s += dt
        log.info("FastRunner: bucket %d (%s, K=%d) ready in %.1f s", batch, variant, key[2], dt)
        return dt

    def _time_stages(self, bucket: _Bucket, reps: int = 5) -> dict[str, float]:
        out = {}
        for name in (*STAGES, "full"):
            fn = replayer(bucket.graphs[name])
            fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            out[name] = (time.perf_counter() - t0) * 1e3 / reps
        return out

    def drop_stage_graphs(self) -> None:
        """Free the per-stage graphs (their timings stay); serving needs only "full"."""
        for b in self.buckets.values():
            for name in list(b.graphs):
                if name != "full":
                    del b.graphs[name]
                    b.outputs.pop(name, None)
            b.keep = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    @staticmethod
    def _key(variant: str, x: dict[str, torch.Tensor]) -> tuple[int, str, int]:
        """Bucket key: (batch, variant, K) with K from the inputs' shapes (0: no K)."""
        b = int(next(iter(x.values())).shape[0])
        k = x["kmask"].shape[1] if "kmask" in x else x["lam"].shape[1] if "lam" in x else 0
        return (b, variant, int(k))

    def stage_callable(
        self, batch: int, name: str, variant: str = "search", k: int | None = None
    ) -> Callable[[], Any]:
        """A zero-argument callable running one stage (or "full") on the bucket's inputs."""
        kk = 0 if variant in ("text", "plain") else (self.k if k is None else k)
        return replayer(self.buckets[(batch, variant, kk)].graphs[name])

    def stage_ms(self, batch: int, variant: str = "search", k: int | None = None) -> dict[str, float]:
        b = self.buckets.get((batch, variant, self.k if k is None else k))
        return dict(b.stage_ms) if b is not None else {}

    def drop(self, variant: str | None = None) -> None:
        """Drop the captured graphs of ``variant`` (all when None)."""
        for key in [k for k in self.buckets if variant is None or k[1] == variant]:
            del self.buckets[key]

    def release(self) -> None:
        """Drop all captured graphs and their memory pools."""
        self.buckets.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def run(self, variant: str, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run ``variant`` on exactly-sized inputs; replays the bucket's graph when one was
        prepared for this batch, else runs eagerly. Outputs are fresh device tensors."""
        names = _INPUTS[variant]
        if set(inputs) != set(names):
            raise ValueError(f"{variant} takes {names}, got {sorted(inputs)}")
        bucket = self.buckets.get(self._key(variant, {n: inputs[n] for n in names}))
        cast = {
            n: inputs[n].to(self.device, self.dtype)
            if n in ("noise", "ctx", "h_retr") else inputs[n].to(self.device)
            for n in names
        }
        if bucket is None or not self.use_graphs:
            return as_tuple(self._full(variant)(*(cast[n] for n in names)))
        for n in names:
            bucket.inputs[n].copy_(cast[n])
        bucket.graphs["full"].replay()
        return tuple(o.clone() for o in as_tuple(bucket.outputs["full"]))

