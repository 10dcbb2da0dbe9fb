"""The one-step retrieval-augmented pipeline (ImageRAGTurbo) over torch modules.

Thin orchestrator: text encoder -> UNet encoder at the student timestep -> H-adapter
or slerp injection or nothing -> UNet decoder -> x0 -> VAE decoder -> uint8. It takes
retrieved H-features and λ as tensors and knows nothing of the index (docs/architecture.md).
Also provides what ingest needs: ``encode_images`` (VAE posterior mean) and
``retrieval_features`` (UNet encoder at t=0 on the clean latent with its caption).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.hadapter import HAdapter
from engines.inject import mix_retrieval
from engines.modes import MODES
from engines.request import Batch, GenerateOutput, ImageRequest, TextEmbeddings
from engines.rules import (
    images_to_uint8,
    seeded_noise,
    stage_timer,
    start_latent,
    tokenize_prompts,
    x0_from_output,
)
from engines.unet_split import HSplitUNet

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)

__all__ = ["MODES", "GenerateAPI", "GenerateOutput", "OneStepPipeline", "TextEmbeddings"]


def alphas_cumprod_from_config(cfg: dict[str, Any]) -> torch.Tensor:
    """ᾱ_t for the scheduler config (linear or scaled_linear betas), float64 (T,)."""
    n = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 0.00085)), float(cfg.get("beta_end", 0.012))
    sched = cfg.get("beta_schedule", "scaled_linear")
    if sched == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    elif sched == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {sched!r} (linear, scaled_linear)")
    return torch.cumprod(1.0 - betas, dim=0)


class GenerateAPI:
    """The generation API (``generate``, ``denoise``, ``__call__``) over a class's
    ``_denoise(batch, timings)``, ``decode_latents`` and ``encode_text``, with the timer and
    the one-step rules (start latent, x0) of ``engines.rules`` (shared
    by OneStepPipeline and the graph backends). ``generate`` takes an ``engines.request.Batch``
    or the positional form ``(text, seeds, modes, h_retr, lam)``, which builds the same batch."""

    backend_name: str
    _denoise: Any
    decode_latents: Any
    encode_text: Any
    device: torch.device
    alphas_cumprod: torch.Tensor
    student_timestep: int
    prediction_type: str

    def predict_x0(self, z: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        a = float(self.alphas_cumprod[self.student_timestep])
        return x0_from_output(z, model_out, a, self.prediction_type)

    def noisy_input(self, noise: torch.Tensor) -> torch.Tensor:
        """The model input at the student timestep for an unknown x0 (``rules.start_latent``)."""
        return start_latent(noise, float(self.alphas_cumprod[self.student_timestep]))

    def _timed(self, timings: dict[str, float], key: str) -> AbstractContextManager[None]:
        return stage_timer(self.device, timings, key)

    @torch.inference_mode()
    def denoise(
        self,
        text: TextEmbeddings | Batch,
        seeds: Sequence[int] | None = None,
        modes: Sequence[str] | str = "adapter",
        h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
        timings: dict[str, float] | None = None,
    ) -> torch.Tensor:
        """One step -> x0 latents (B,4,L,L) float32 on ``self.device``."""
        batch = self._with_text(Batch.of(text, seeds, modes, h_retr, lam), {})
        return self._denoise(batch, {} if timings is None else timings)

    def _with_text(self, batch: Batch, timings: dict[str, float]) -> Batch:
        if batch.search is not None:
            raise ValueError(f"{type(self).__name__} cannot search inside its graph; pass neighbours")
        if batch.text is not None:
            return batch
        with self._timed(timings, "text"):
            return replace(batch, text=self.encode_text(batch.prompts))

    @torch.inference_mode()
    def generate(
        self,
        batch: Batch | TextEmbeddings,
        seeds: Sequence[int] | None = None,
        modes: Sequence[str] | str = "adapter",
        h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> GenerateOutput:
        """A batch (or text (B) + seeds (B) [+ h_retr (B,k,C,h,w), λ (B,k)]) -> uint8 images (B,H,W,3)."""
        timings: dict[str, float] = {}
        b = self._with_text(Batch.of(batch, seeds, modes, h_retr, lam), timings)
        x0 = self._denoise(b, timings)
        with self._timed(timings, "vae"):
            images = self.decode_latents(x0)
        return GenerateOutput(images=images, timings_ms=timings)

    def __call__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        modes: Sequence[str] | str = "adapter",
        h_retr: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> GenerateOutput:
        """Convenience: prompts -> images (text encoding timed as 'text')."""
        timings: dict[str, float] = {}
        with self._timed(timings, "text"):
            text = self.encode_text(prompts)
        out = self.generate(text, seeds, modes, h_retr, lam)
        out.timings_ms = {**timings, **out.timings_ms}
        return out


class OneStepPipeline(GenerateAPI):
    """One-step generation with optional retrieved H-features (the ``torch`` backend's engine).

    Build with ``from_pretrained(model_dir)`` (local files only) or ``from_arch`` (random
    weights of an in-code config, for speed work and tests).
    """

    backend_name = "torch"

    def __init__(
        self,
        *,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        hadapter: HAdapter,
        scheduler_config: dict[str, Any],
        student_timestep: int = 999,
        name: str = "model",
        fingerprint: str = "unknown",
        inject_weight: float = 0.8,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = HSplitUNet(unet) if not isinstance(unet, HSplitUNet) else unet
        self.vae = vae
        self.hadapter = hadapter
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = str(self.scheduler_config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.alphas_cumprod = alphas_cumprod_from_config(self.scheduler_config)
        n = len(self.alphas_cumprod)
        if not 0 <= student_timestep < n:
            raise ValueError(f"student_timestep {student_timestep} outside [0, {n})")
        self.student_timestep = int(student_timestep)
        self.name = name
        self.fingerprint = fingerprint
        if not 0.0 <= inject_weight <= 1.0:
            raise ValueError(f"inject_weight must be in [0,1], got {inject_weight}")
        self.inject_weight = inject_weight
        self.vae_decoder = "full"  # from_pretrained sets "small" when it swaps the decoder
        self.max_length = int(getattr(tokenizer, "model_max_length", 77) or 77)
        self.max_length = min(self.max_length, 77)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path | ModelDir,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        inject_weight: float = 0.8,
        vae_decoder: str = "full",
    ) -> OneStepPipeline:
        """Load a model directory (a path, or a ``ModelDir`` already opened: it is not read again).
        ``vae_decoder``: "full" (the model's VAE) or "small" (the distilled decoder in
        ``vae_small/`` replaces ``vae.decoder``; the name gets "+vae_small", the
        fingerprint, which keys the H-features, stays: the encoder is unchanged)."""
        from engines.modeldir import ModelDir, load_components
        from engines.vae_decoder import (
            SMALL_DIR,
            check_choice,
            load_small_decoder,
            small_decoder_dir,
        )

        check_choice(vae_decoder)
        md = ModelDir.open(model_dir)
        if vae_decoder == "small":
            small_decoder_dir(md.path)  # fail before loading gigabytes
        comps = load_components(md, device=device, dtype=dtype)
        info = comps.pop("info")
        name = info.name
        if vae_decoder == "small":
            dec, cfg = load_small_decoder(info.path, device=device, dtype=dtype)
            comps["vae"].decoder = dec
            name = f"{info.name}+{SMALL_DIR}"
            log.info("VAE decoder: small (%s/%s, block_out_channels %s)", info.path, SMALL_DIR,
                     cfg.get("block_out_channels"))
        else:
            log.info("VAE decoder: full (%s/vae)", info.path)
        pipe = cls(
            **comps,
            student_timestep=info.student_timestep,
            name=name,
            fingerprint=md.fingerprint,
            inject_weight=inject_weight,
        )
        pipe.vae_decoder = vae_decoder
        return pipe

    @classmethod
    def from_arch(
        cls,
        arch: str = "tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> OneStepPipeline:
        """Random weights of an in-code config (no files, no download)."""
        from engines.random_models import build_random_components

        comps = build_random_components(arch, seed=seed)
        pipe = cls(**comps, name=f"{arch}-random", fingerprint=f"{arch}-random-{seed}")
        return pipe.to(device, dtype)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> OneStepPipeline:
        for m in self.modules().values():
            m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "vae": self.vae,
            "hadapter": self.hadapter,
        }

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return int(self.unet.unet.config.sample_size)

    @property
    def resolution(self) -> int:
        return self.latent_size * self.vae_scale

    @property
    def latent_channels(self) -> int:
        return int(self.unet.unet.config.in_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def h_shape(self) -> tuple[int, int, int]:
        return self.unet.h_shape((self.latent_size, self.latent_size))

    @property
    def embed_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    # ------------------------------------------------------------------ stages
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return tokenize_prompts(self.tokenizer, prompts, self.max_length, self.device)

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str]) -> TextEmbeddings:
        """prompts (B) -> context (B,77,D), pooled (B,D)."""
        out = self.text_encoder(self.tokenize(prompts))
        return TextEmbeddings(out.last_hidden_state, out.pooler_output)

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W,3) at the native resolution -> latents (B,4,h,w), deterministic (posterior mean)."""
        x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (B,H,W,3), got shape {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != (self.resolution, self.resolution):
            raise ValueError(
                f"images must be {self.resolution}x{self.resolution}, got {tuple(x.shape[1:3])}"
            )
        x = x.to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0
        lat = self.vae.encode(x).latent_dist.mean
        return lat * float(self.vae.config.scaling_factor)

    @torch.inference_mode()
    def retrieval_features(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Clean latents (B,4,h,w) + caption context (B,T,D) -> H-features (B,C,h',w') at t=0."""
        t = torch.zeros((), device=self.device, dtype=torch.long)
        h, _, _ = self.unet.encode(latents.to(self.device, self.dtype), t, context.to(self.dtype))
        return h

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Per-image CPU generators, so an image depends only on its own seed."""
        shape = (self.latent_channels, self.latent_size, self.latent_size)
        return seeded_noise(seeds, shape).to(self.device, self.dtype)

    def apply_retrieval(
        self,
        h: torch.Tensor,
        modes: Sequence[str],
        h_retr: torch.Tensor | None,
        lam: torch.Tensor | None,
    ) -> torch.Tensor:
        """Per-sample: adapter, slerp injection (top-1 neighbour) or nothing
        (``engines.inject.mix_retrieval`` over the modes' controls)."""
        if h_retr is None or lam is None:
            return h
        if h_retr.shape[0] != h.shape[0] or lam.shape[0] != h.shape[0]:
            raise ValueError(
                f"retrieved batch {h_retr.shape[0]}/{lam.shape[0]} does not match batch {h.shape[0]}"
            )
        ctrl = Batch(tuple(ImageRequest("", 0, m) for m in modes)).controls()  # type: ignore[arg-type]
        return mix_retrieval(h, h_retr.to(h.device, h.dtype), lam.to(h.device, torch.float32),
                             ctrl.to(h.device), self.hadapter, self.inject_weight)

    def _denoise(self, batch: Batch, timings: dict[str, float]) -> torch.Tensor:
        """One step: -> x0 latents (B,4,h,w)."""
        assert batch.text is not None
        b = len(batch)
        nb = batch.neighbours
        with self._timed(timings, "unet"):
            z = self.noisy_input(self.initial_noise(batch.seeds))
            t = torch.full((b,), self.student_timestep, device=self.device, dtype=torch.long)
            ctx = batch.text.context.to(self.device, self.dtype)
            h, skips, temb = self.unet.encode(z, t, ctx)
            if nb is not None:
                h = self.apply_retrieval(h, batch.modes, nb.h_retr, nb.lam)
            out = self.unet.decode(h, skips, temb, ctx)
            x0 = self.predict_x0(z, out)
        return x0

    @torch.inference_mode()
    def decode_latents(self, x0: torch.Tensor) -> np.ndarray:
        """x0 latents -> uint8 (B,H,W,3)."""
        img = self.vae.decode(x0 / float(self.vae.config.scaling_factor)).sample
        return images_to_uint8(img).cpu().numpy()

