"""The backend interface: what the compose layer calls, whatever runs the graphs.

A backend exposes the same surface as ``OneStepPipeline`` for serving —
``encode_text``, ``generate``, ``name``, ``fingerprint``, ``resolution``, ``h_shape``,
``embed_dim`` — plus ``backend_name``, and takes one ``engines.request.Batch`` in
``generate``. ``GraphBackend`` implements the host side once (state from the model dir or a
loaded pipeline, tokenisation, per-seed noise and the start latent, the batch's neighbours
and controls, chunking, x0 from the model output, uint8 images, timings); a runtime only
supplies ``_run(component, inputs) -> outputs`` for the three graphs of ``engines.shapes``
(``fast`` also overrides ``generate`` with its fused CUDA graphs). Ingest-only calls
(``encode_images``, ``retrieval_features``) use a torch pipeline loaded on first use.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from engines.backends.registry import Capabilities
from engines.pipeline import GenerateAPI, alphas_cumprod_from_config
from engines.request import Batch, GenerateOutput, TextEmbeddings, chunk_slices
from engines.rules import (
    images_to_uint8,
    seeded_noise,
    tokenize_prompts,
)
from engines.shapes import ShapeSpec, spec_from_model_dir

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot start here; the message says why and what to do.

    The service reports not-ready on this error; there is no fallback to another backend.
    """


def require_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; BackendUnavailable when it is CUDA and torch sees none."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {dev} requested but torch sees no CUDA device")
    return dev


def device_and_dtype(
    cls: type[Backend], device: str | torch.device, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """The device (``require_device``) and dtype of ``cls`` built directly: its default on
    that device when None; a dtype its ``capabilities`` refuse raises BackendUnavailable."""
    dev = require_device(device)
    name = str(dtype).removeprefix("torch.") if dtype is not None else None
    why = cls.capabilities.refusal(cls.backend_name, dev.type, name, "full", {})
    if why is not None and name is not None:
        raise BackendUnavailable(why)
    return dev, getattr(torch, cls.capabilities.default_dtype(dev.type, name))


class Backend(ABC):
    """What ``TextToImage`` needs from an engine (see module docstring).

    A backend class declares what it can do in ``capabilities`` (read by settings and the
    factory, ``engines.backends.registry``) and is built by ``open``."""

    backend_name: str
    capabilities: ClassVar[Capabilities] = Capabilities()
    name: str
    fingerprint: str
    device: torch.device

    _shapes: Any
    """What the shape properties below read: a ``ShapeSpec`` (the graph backends) or the
    pipeline (``fast``); ``TorchBackend`` is the pipeline, whose own properties come first."""

    @property
    def resolution(self) -> int:
        return int(self._shapes.resolution)

    @property
    def h_shape(self) -> tuple[int, int, int]:
        return tuple(self._shapes.h_shape)  # type: ignore[return-value]

    @property
    def embed_dim(self) -> int:
        return int(self._shapes.embed_dim)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the VAE latent (what ingest stores beside the H-features)."""
        return tuple(self._shapes.latent_shape)  # type: ignore[return-value]

    @abstractmethod
    def encode_text(self, prompts: Sequence[str]) -> TextEmbeddings: ...

    @abstractmethod
    def generate(self, batch: Batch) -> GenerateOutput:
        """One ``engines.request.Batch`` -> uint8 images (and, for an in-graph search, the
        rows and scores found). The graph backends and the pipeline also take the positional
        form ``generate(text, seeds, modes, h_retr, lam)`` (``Batch.given``)."""

    @classmethod
    @abstractmethod
    def open(
        cls, model_dir: str | Path | ModelDir, *, device: torch.device, dtype: torch.dtype,
        inject_weight: float, vae_decoder: str, graph_dir: str | Path | None, **options: Any,
    ) -> Backend:
        """Build the backend (what ``create_backend`` calls once ``capabilities`` allow the
        setup); ``graph_dir``: the directory of ``capabilities.graph_dir``, if any."""

    def warmup(self, search: bool = False) -> float:
        """Compile and capture what serving runs, before traffic; seconds. ``search``: the
        device copy of the database is attached (searching backends). Default: nothing."""
        return 0.0

    def describe(self) -> dict[str, Any]:
        """What runs, for the startup log and the build-info metric."""
        return {"backend": self.backend_name, "model": self.name, "fingerprint": self.fingerprint}


class GraphBackend(GenerateAPI, Backend):
    """Host-side logic shared by the graph runtimes (fast, torch-opt, onnxruntime, tensorrt).

    Subclasses set ``backend_name`` and implement ``_run``; ``max_batch`` (None: any)
    splits larger batches into chunks, which is exact because samples are independent.
    """

    max_batch: int | None = None
    max_k: int | None = None

    def __init__(
        self,
        model_dir: str | Path | ModelDir,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        spec: ShapeSpec | None = None,
        inject_weight: float = 0.8,
    ) -> None:
        from engines.modeldir import ModelDir

        md = ModelDir.open(model_dir)
        if spec is not None and spec.stale_unet():
            raise BackendUnavailable(str(spec.stale_unet()))
        self.model: ModelDir | None = md
        self.model_dir = md.path
        self._setup(device, dtype, spec or spec_from_model_dir(md), md.name, md.fingerprint, md.tokenizer,
                    md.scheduler_config, md.info.student_timestep, inject_weight)

    def _setup(
        self, device: str | torch.device, dtype: torch.dtype, spec: ShapeSpec, name: str, fingerprint: str,
        tokenizer: Any, scheduler_config: dict[str, Any], student_timestep: int, inject_weight: float,
    ) -> None:
        """The host side's state, from a model directory (``__init__``) or a loaded pipeline."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.spec = spec
        self._shapes = spec
        self.name = name
        self.fingerprint = fingerprint
        self.inject_weight = float(inject_weight)
        self.tokenizer = tokenizer
        self.prediction_type = str(scheduler_config.get("prediction_type", "epsilon"))
        self.alphas_cumprod = alphas_cumprod_from_config(scheduler_config)
        self.student_timestep = int(student_timestep)
        self._torch_pipe: Any = None

    @property
    def latent_size(self) -> int:
        return self.spec.latent_size

    # ------------------------------------------------------------------ runtime hook
    @abstractmethod
    def _run(self, component: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one graph. Inputs are on ``self.device``; outputs keyed by the spec's names."""

    # ------------------------------------------------------------------ helpers
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return tokenize_prompts(self.tokenizer, prompts, self.spec.text_len, self.device)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Per-image CPU generators (as ``OneStepPipeline.initial_noise``), float32 (B,4,L,L)."""
        s = self.spec
        return seeded_noise(seeds, (s.latent_channels, s.latent_size, s.latent_size))

    # ------------------------------------------------------------------ API
    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> TextEmbeddings:
        """prompts (B) -> context (B,T,D), pooled (B,D) on ``self.device``, float32."""
        ids = self.tokenize(prompts)
        parts = [self._encode_chunk(ids[sl]) for sl in chunk_slices(len(ids), self.max_batch)]
        return TextEmbeddings(torch.cat([c.float() for c, _ in parts]),
                              torch.cat([p.float() for _, p in parts]))

    def _encode_chunk(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of at most ``max_batch`` prompts -> (context, pooled)."""
        out = self._run("text_encoder", {"input_ids": ids})
        return out["context"], out["pooled"]

    def _neighbours(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_retr (B,k,C,h,w), λ (B,k)) float32 of the batch; one zero-λ neighbour when it has none."""
        c, hh, ww = self.h_shape
        b = len(batch)
        nb = batch.neighbours
        if nb is None:
            return torch.zeros((b, 1, c, hh, ww)), torch.zeros((b, 1))
        if tuple(nb.h_retr.shape[2:]) != (c, hh, ww):
            raise ValueError(f"h_retr must be (B={b},k,{c},{hh},{ww}), got {tuple(nb.h_retr.shape)}")
        if self.max_k is not None and nb.k > self.max_k:
            raise ValueError(f"k={nb.k} neighbours exceeds this backend's maximum {self.max_k}")
        return nb.h_retr.float(), nb.lam.float()

    def _denoise(self, batch: Batch, timings: dict[str, float]) -> torch.Tensor:
        """The graphs' step over chunks of ``max_batch``."""
        assert batch.text is not None
        hr, lm = self._neighbours(batch)
        ctrl = batch.controls()
        dev = self.device
        x0s = []
        with self._timed(timings, "unet"):
            for sl in chunk_slices(len(batch), self.max_batch):
                z = self.noisy_input(self.initial_noise(batch.seeds[sl])).to(dev)
                feeds = {
                    "sample": z,
                    "timestep": torch.full((len(z),), float(self.student_timestep), device=dev),
                    "context": batch.text.context[sl].to(dev, torch.float32),
                    "h_retr": hr[sl].to(dev),
                    "lam": lm[sl].to(dev),
                    "controls": ctrl[sl].to(dev),
                }
                out = self._run("unet", feeds)["model_output"].float()
                x0s.append(self.predict_x0(z, out))
        return torch.cat(x0s)

    @torch.inference_mode()
    def decode_latents(self, x0: torch.Tensor) -> np.ndarray:
        """x0 latents (B,4,L,L) -> uint8 (B,H,W,3)."""
        imgs = [
            images_to_uint8(self._run("vae_decoder", {"latent": x0[sl].to(self.device)})["image"])
            .cpu()
            .numpy()
            for sl in chunk_slices(len(x0), self.max_batch)
        ]
        return np.concatenate(imgs)


    # ------------------------------------------------------------------ ingest (torch)
    def torch_pipeline(self) -> Any:
        """The torch pipeline of the same model dir (loaded once, on this device, fp32)."""
        if self._torch_pipe is None:
            assert self.model is not None
            from engines.pipeline import OneStepPipeline

            log.info("%s backend: loading the torch pipeline for ingest calls", self.backend_name)
            self._torch_pipe = OneStepPipeline.from_pretrained(
                self.model, device=self.device, inject_weight=self.inject_weight
            )
        return self._torch_pipe

    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.torch_pipeline().encode_images(images)

    def retrieval_features(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.torch_pipeline().retrieval_features(latents, context)


class SearchingBackend(Backend):
    """A backend that holds a device copy of the database and searches it inside its graph.

    The retrieval side (``retrieval.resident``) fills the copy with ``add_index_rows`` and
    maps the returned rows back to pair ids; ``generate`` of a batch with ``search`` set runs
    token ids -> exact top-K cosine -> λ -> gather -> UNet -> VAE -> uint8 as one graph per
    batch bucket and returns the rows and scores with the images.
    """

    k_max: int

    @abstractmethod
    def reserve_index(self, capacity: int, feature_dtype: str = "float16") -> None:
        """Allocate an empty device index of ``capacity`` rows (replaces any previous one)."""

    @abstractmethod
    def add_index_rows(self, embeddings: torch.Tensor, features: torch.Tensor) -> range:
        """Append rows (m,D) + (m,C,h,w); grows the index (and re-captures) when full."""

    @property
    @abstractmethod
    def index_rows(self) -> int:
        """Rows in the device index (0 before ``reserve_index``)."""
