"""``fast`` is a ``GraphBackend``: its eager graphs (``_run``) step through the shared host side
(``denoise``, ``decode_latents``) and match both the torch pipeline and its own fused path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.backends import create_backend
from engines.backends.base import GraphBackend
from engines.request import Batch, ImageRequest


def test_fast_backend_steps_like_the_pipeline_through_the_shared_host_side(tiny_model_dir: Path) -> None:
    fast = create_backend("fast", tiny_model_dir, buckets=(1, 4), k_buckets=(2,))
    ref = create_backend("torch", tiny_model_dir)
    assert isinstance(fast, GraphBackend)
    assert (fast.resolution, fast.h_shape, fast.embed_dim) == (ref.resolution, ref.h_shape, ref.embed_dim)
    prompts, seeds, modes = ["a red circle", "two blue squares", "a green cross"], [1, 2, 3], ["adapter", "inject", "off"]
    g = torch.Generator().manual_seed(0)
    hr = torch.randn((3, 2, *ref.h_shape), generator=g)
    lam = torch.tensor([[0.9, 0.5], [0.8, 0.0], [0.7, 0.7]])
    text = ref.encode_text(prompts)
    x_ref = ref.denoise(text, seeds, modes, hr, lam)
    x_fast = fast.denoise(text, seeds, modes, hr, lam)  # GraphBackend._denoise over fast._run
    assert torch.allclose(x_fast, x_ref, atol=1e-4)
    fused = fast.generate(Batch(tuple(ImageRequest(p, s, m, 2) for p, s, m in zip(prompts, seeds, modes)),
                                text=fast.encode_text(prompts), neighbours=Batch.given(text, seeds, modes, hr, lam).neighbours))
    stepped = fast.decode_latents(x_fast)
    assert fused.images.shape == stepped.shape == (3, ref.resolution, ref.resolution, 3)
    assert int(np.abs(fused.images.astype(int) - stepped.astype(int)).max()) <= 1
