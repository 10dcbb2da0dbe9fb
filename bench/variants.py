"""The two reference variants the optimised runner is measured against.

- ``DiffusersEager``: the plain diffusers/transformers modules, eager, SDPA attention,
  contiguous memory (the baseline): CLIPTextModel -> UNet2DConditionModel.forward ->
  x0 -> AutoencoderKL.decode -> uint8 on the device. No retrieval (plain SD-Turbo).
- ``DiffusersCompiled``: the tuned peer: the same modules (copies), channels-last,
  each under ``torch.compile(mode="reduce-overhead")`` (Inductor + CUDA graphs), the
  text encoder included; the scalar glue and uint8 conversion run eagerly between.

Both take the same inputs as the runner (token ids, noise) and record stage marks.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch

from bench.timing import Marker
from engines.pipeline import OneStepPipeline
from engines.rules import images_to_uint8, start_latent, x0_from_output

log = logging.getLogger(__name__)


class DiffusersEager:
    """Plain diffusers pipeline pieces (what a user gets without tuning)."""

    name = "diffusers-eager"

    def __init__(self, pipe: OneStepPipeline) -> None:
        self.text_encoder = pipe.text_encoder
        self.unet = pipe.unet.unet  # the diffusers UNet2DConditionModel
        self.vae = pipe.vae
        self.t = pipe.student_timestep
        a = float(pipe.alphas_cumprod[pipe.student_timestep])
        self.alpha_bar = a
        self.prediction_type = pipe.prediction_type
        self.sf = float(pipe.vae.config.scaling_factor)
        self.build_s = 0.0

    def _text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids).last_hidden_state

    def _unet(self, z: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return self.unet(z, t, encoder_hidden_states=ctx).sample

    def _vae(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x).sample

    def _begin(self) -> None:
        pass

    @torch.inference_mode()
    def iteration(self, x: dict[str, torch.Tensor], m: Marker) -> torch.Tensor:
        """One generation with stage marks: text, unet, vae. Returns uint8 (B,R,R,3)."""
        self._begin()
        m.mark("start")
        ctx = self._text(x["ids"])
        m.mark("text")
        z = start_latent(x["noise"], self.alpha_bar)
        t = torch.full((z.shape[0],), self.t, device=z.device, dtype=torch.long)
        out = self._unet(z, t, ctx)
        x0 = x0_from_output(z, out, self.alpha_bar, self.prediction_type)
        m.mark("unet")
        img = self._vae(x0 / self.sf)
        img = images_to_uint8(img)
        m.mark("vae")
        return img


class DiffusersCompiled(DiffusersEager):
    """The tuned peer: torch.compile(mode="reduce-overhead"), channels-last, same dtype.

    Works on deep copies of the modules, so the caller's modules stay eager and
    untouched (and later in-place changes to them do not leak in).
    """

    name = "diffusers-compile-ro"

    def __init__(self, pipe: OneStepPipeline, mode: str = "reduce-overhead") -> None:
        super().__init__(pipe)
        t0 = time.perf_counter()
        self.text_encoder = copy.deepcopy(pipe.text_encoder)
        self.unet = copy.deepcopy(pipe.unet.unet).to(memory_format=torch.channels_last)
        self.vae = copy.deepcopy(pipe.vae).to(memory_format=torch.channels_last)
        self.mode = mode
        self._text_c = torch.compile(self.text_encoder, mode=mode)
        self._unet_c = torch.compile(self.unet, mode=mode)
        self._vae_c = torch.compile(self.vae.decode, mode=mode)
        self.build_s = time.perf_counter() - t0

    def _begin(self) -> None:
        torch.compiler.cudagraph_mark_step_begin()

    @staticmethod
    def _dyn(*xs: torch.Tensor) -> None:
        # Batch > 1: one compile with a symbolic batch serves every bucket (batch 1 is
        # compiled on its own, static, as torch specialises size-1 dimensions).
        for x in xs:
            if x.shape[0] > 1:
                torch._dynamo.mark_dynamic(x, 0)

    def _text(self, ids: torch.Tensor) -> torch.Tensor:
        self._dyn(ids)
        return self._text_c(ids).last_hidden_state

    def _unet(self, z: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        z = z.contiguous(memory_format=torch.channels_last)
        self._dyn(z, t, ctx)
        return self._unet_c(z, t, encoder_hidden_states=ctx).sample

    def _vae(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        self._dyn(x)
        return self._vae_c(x).sample

    def warm(self, x: dict[str, Any], device: torch.device) -> float:
        """Compile (first call per shape) and record graphs; returns seconds."""
        t0 = time.perf_counter()
        for _ in range(3):
            self.iteration(x, Marker(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        self.build_s += dt
        return dt
