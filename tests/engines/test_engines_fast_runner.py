"""The fast runner (engines.fast) gives the pipeline's images, and its stage timing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.fast.runner import FastConfig, FastRunner
from engines.pipeline import OneStepPipeline
from engines.request import Batch


@pytest.mark.parametrize("mode", ["adapter", "inject", "off"])
def test_fast_runner_equals_pipeline_generate(tiny_model_dir: Path, mode: str) -> None:
    """The fast path computes what OneStepPipeline.generate computes (same noise, neighbours, λ)."""
    from engines.fast.gpu_index import GpuIndex

    pipe = OneStepPipeline.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    store = torch.randn((10, *pipe.h_shape), generator=g)
    emb = torch.randn((10, pipe.embed_dim), generator=g)
    index = GpuIndex(pipe.embed_dim, pipe.h_shape, 16, pipe.device, pipe.dtype)
    index.append(emb, store)
    runner = FastRunner(pipe, 2, config=FastConfig(compile="none"), index=index)
    prompts = ["a red circle", "two blue squares"]
    seeds = [5, 6]
    text = pipe.encode_text(prompts)
    scores = torch.nn.functional.normalize(text.pooled, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    top, nbr = scores.topk(2, dim=1)
    kmask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second request asked for k=1
    lam = torch.where(top > 0, top, torch.zeros_like(top)) * kmask
    want = pipe.generate(text, seeds, mode, store[nbr], lam).images
    ctrl = Batch.given(text, seeds, mode).controls()
    got, rows, sc = runner.run("search", ids=pipe.tokenize(prompts), noise=pipe.initial_noise(seeds),
                               kmask=kmask, ctrl=ctrl)
    assert torch.equal(rows, nbr) and torch.allclose(sc, top, atol=1e-5)
    got = got.numpy()
    assert got.shape == want.shape == (2, 64, 64, 3)
    assert int(abs(got.astype(int) - want.astype(int)).max()) <= 1
    if mode == "adapter":  # the adapter acts in this model: retrieval changes the image
        off = pipe.generate(text, seeds, "off").images
        assert abs(off.astype(int) - want.astype(int)).max() > 1


def test_fast_runner_stage_timing_runs_on_weights_that_track_gradients(tiny_model_dir: Path) -> None:
    """prepare(stages=True) times each stage under inference mode, like its capture, so a
    pipeline whose modules were not frozen (requires_grad) still gets its stage times."""
    from engines.fast.gpu_index import GpuIndex

    pipe = OneStepPipeline.from_pretrained(tiny_model_dir)
    pipe.unet.requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    index = GpuIndex(pipe.embed_dim, pipe.h_shape, 16, pipe.device, pipe.dtype)
    index.append(torch.randn((10, pipe.embed_dim), generator=g), torch.randn((10, *pipe.h_shape), generator=g))
    runner = FastRunner(pipe, 2, config=FastConfig(compile="none"), index=index)
    runner.prepare(1, "search", stages=True)
    ms = runner.stage_ms(1)
    assert set(ms) >= {"text", "retrieval", "unet", "vae", "full"} and all(v > 0 for v in ms.values())
