"""torch backends: ``torch`` (the eager pipeline as is) and ``torch-opt`` (optimised).

``torch`` is ``OneStepPipeline`` itself behind the backend interface, adding nothing: the
reference every other backend is compared with.

``torch-opt`` runs the same graphs as the exported engines (``engines.graphs``)
with, on CUDA: fp16/bf16 weights, channels-last UNet/VAE, ``torch.compile`` and one CUDA
graph per batch bucket (batches padded up to the next bucket, neighbours padded to
``k_max`` with λ=0, so each bucket is one static-shape graph captured on first use or in
``warmup``: ``engines.cuda_graphs.PaddedBucketRunner``). Padding is exact: padded rows are
computed and dropped; a zero-λ neighbour adds exactly zero. On CPU the defaults turn
compile and CUDA graphs off and the graph modules run eagerly (what the CPU tests exercise,
with bucket padding on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engines.backends.base import (
    Backend,
    BackendUnavailable,
    GraphBackend,
    device_and_dtype,
    require_device,
)
from engines.backends.registry import Capabilities
from engines.cuda_graphs import PaddedBucketRunner
from engines.pipeline import OneStepPipeline
from engines.shapes import BATCH_BUCKETS

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)


class TorchBackend(OneStepPipeline, Backend):
    """The eager ``OneStepPipeline`` as a backend: the pipeline itself, named ``torch``.

    Build with ``TorchBackend.from_pretrained`` (what ``create_backend("torch", ...)`` does).
    """

    backend_name = "torch"
    capabilities = Capabilities()

    @classmethod
    def open(
        cls, model_dir: str | Path | ModelDir, *, device: torch.device, dtype: torch.dtype,
        inject_weight: float, vae_decoder: str, graph_dir: str | Path | None = None, **options: Any,
    ) -> TorchBackend:
        if options:
            raise ValueError(f"torch backend takes no options, got {sorted(options)}")
        return cls.from_pretrained(model_dir, require_device(device), dtype, inject_weight, vae_decoder)

    @property
    def pipe(self) -> OneStepPipeline:
        """The pipeline: this object (for code that reads a backend's torch pipeline)."""
        return self

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vae_decoder": self.vae_decoder}


class TorchOptBackend(GraphBackend):
    """Optimised torch: reduced precision, channels-last, torch.compile, CUDA graphs per bucket.

    Args:
        compile: ``torch.compile`` the UNet and VAE graphs (default: on CUDA only).
        cuda_graphs: capture a CUDA graph per batch bucket (default: on CUDA only).
        channels_last: channels-last memory format for UNet/VAE (default: on CUDA only).
        buckets: batch buckets; larger batches are split into chunks of the largest.
        pad_to_buckets: pad to buckets even without CUDA graphs (tests the padding path).
        compile_mode: ``torch.compile`` mode ("default", "max-autotune-no-cudagraphs").
    """

    backend_name = "torch-opt"
    capabilities = Capabilities(
        dtypes={"cpu": ("float32", "bfloat16"), "cuda": ("float16", "bfloat16", "float32")}, buckets=True)

    @classmethod
    def open(
        cls, model_dir: str | Path | ModelDir, *, device: torch.device, dtype: torch.dtype,
        inject_weight: float, vae_decoder: str, graph_dir: str | Path | None = None, **options: Any,
    ) -> TorchOptBackend:
        return cls(model_dir, device, dtype, inject_weight, vae_decoder=vae_decoder, **options)

    def __init__(
        self,
        model_dir: str | Path | ModelDir,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        inject_weight: float = 0.8,
        compile: bool | None = None,
        cuda_graphs: bool | None = None,
        channels_last: bool | None = None,
        buckets: Sequence[int] = BATCH_BUCKETS,
        pad_to_buckets: bool | None = None,
        compile_mode: str = "default",
        vae_decoder: str = "full",
    ) -> None:
        from engines.graphs import TextEncoderGraph, UNetGraph, VaeDecoderGraph

        dev, dtype = device_and_dtype(type(self), device, dtype)
        on_cuda = dev.type == "cuda"
        super().__init__(model_dir, dev, dtype, inject_weight=inject_weight)
        self.compile = on_cuda if compile is None else compile
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise BackendUnavailable("torch-opt: cuda_graphs=True needs a CUDA device")
        self.channels_last = on_cuda if channels_last is None else channels_last
        pad = self.cuda_graphs if pad_to_buckets is None else (pad_to_buckets or self.cuda_graphs)
        pipe = OneStepPipeline.from_pretrained(
            self.model, device=dev, dtype=dtype, inject_weight=inject_weight, vae_decoder=vae_decoder
        )
        self.name = pipe.name  # "+vae_small" when the small decoder runs
        self.vae_decoder = vae_decoder
        self._torch_pipe = pipe  # ingest calls reuse it
        if self.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        text = TextEncoderGraph(pipe.text_encoder).eval()
        unet = UNetGraph(pipe.unet, pipe.hadapter, inject_weight).eval()
        vae = VaeDecoderGraph(pipe.vae).eval()
        unet_fn: Callable[..., Any] = unet
        vae_fn: Callable[..., Any] = vae
        if self.compile:
            unet_fn = torch.compile(unet, mode=compile_mode, dynamic=False, fullgraph=False)
            vae_fn = torch.compile(vae, mode=compile_mode, dynamic=False, fullgraph=False)
        self.buckets = tuple(sorted({int(x) for x in buckets}))
        self.max_batch = self.buckets[-1] if pad else None
        k_pad = self.spec.k.max if pad else None
        self.max_k = self.spec.k.max if pad else None
        cl = ("sample",) if self.channels_last else ()
        specs = {c: self.spec.component(c) for c in ("text_encoder", "unet", "vae_decoder")}
        self._text = text
        self._runners: dict[str, Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, ...]]] = {}
        if pad:
            self._runners["unet"] = PaddedBucketRunner(
                unet_fn, specs["unet"].input_names, self.buckets, k_pad, self.cuda_graphs, cl
            )
            self._runners["vae_decoder"] = PaddedBucketRunner(
                vae_fn, ["latent"], self.buckets, None, self.cuda_graphs,
                ("latent",) if self.channels_last else (),
            )
        else:
            names = specs["unet"].input_names
            self._runners["unet"] = lambda x: (unet_fn(*(x[n] for n in names)),)
            self._runners["vae_decoder"] = lambda x: (vae_fn(x["latent"]),)
        log.info(
            "torch-opt on %s %s: compile=%s cuda_graphs=%s channels_last=%s buckets=%s",
            dev, dtype, self.compile, self.cuda_graphs, self.channels_last,
            self.buckets if pad else "none",
        )

    def _run(self, component: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.spec.component(component)
        cast = {
            n: (x.to(self.dtype) if x.is_floating_point() and n not in ("timestep",) else x)
            for n, x in inputs.items()
        }
        if component == "text_encoder":
            ctx, pooled = self._text(cast["input_ids"])
            return {"context": ctx, "pooled": pooled}
        outs = self._runners[component](cast)
        return dict(zip(spec.output_names, outs))

    def warmup(self, search: bool = False) -> float:
        """Compile and capture every bucket now instead of on the first requests; seconds."""
        t0 = time.perf_counter()
        for b in self.buckets:
            self(["warmup"] * b, list(range(b)), "adapter")
        return time.perf_counter() - t0

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(compile=self.compile, cuda_graphs=self.cuda_graphs, dtype=str(self.dtype),
                 vae_decoder=self.vae_decoder)
        return d
