"""The query side of a database for commands that only search (``ragturbo search``).

A search needs the caption vector of the query (the text encoder and tokenizer) and what
``open_db`` checks against the stored features (the model fingerprint and the shapes,
read from the configs). ``QueryEncoder`` loads exactly that, not the UNet or the VAE, and
encodes as ``OneStepPipeline.encode_text`` does (same tokenizer padding, fp32), so the
scores equal those of the service (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engines.modeldir import ModelDir, ModelDirError
from engines.rules import tokenize_prompts


class QueryEncoder:
    """Text encoder + tokenizer of a model directory, with the facts ``open_db`` needs."""

    def __init__(self, model_dir: str | Path | ModelDir) -> None:
        from transformers import CLIPTextModel

        self.md = ModelDir.open(model_dir)
        path = self.md.path / "text_encoder"
        try:
            self.text_encoder = CLIPTextModel.from_pretrained(
                str(path), dtype=torch.float32, local_files_only=True
            ).eval()
        except (OSError, ValueError, KeyError) as e:
            raise ModelDirError(f"could not load the text encoder {path}: {e}") from e
        self.max_length = min(int(getattr(self.md.tokenizer, "model_max_length", 77) or 77), 77)
        unet = self.md.configs["unet"]
        levels = len(unet["block_out_channels"]) - 1
        size = int(unet["sample_size"])
        self.h_shape = (int(unet["block_out_channels"][-1]), size // 2**levels, size // 2**levels)
        self.latent_shape = (int(unet["in_channels"]), size, size)

    @property
    def fingerprint(self) -> str:
        return self.md.fingerprint

    @property
    def embed_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @torch.inference_mode()
    def pooled(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts (B) -> pooled caption vectors (B, D), as the service computes them."""
        ids = tokenize_prompts(self.md.tokenizer, prompts, self.max_length, torch.device("cpu"))
        out: Any = self.text_encoder(ids)
        return out.pooler_output
