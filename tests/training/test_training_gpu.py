"""The job on CUDA with bf16 autocast, gradient checkpointing and EMA (skipped without a GPU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_gpu_run_trains_and_exports(make_config: Any, tmp_path: Path) -> None:
    from engines.pipeline import OneStepPipeline
    from training.adapter import train
    from training.export import export_checkpoint

    cfg = make_config(tmp_path / "run", steps=3)
    cfg.update(device="cuda", mixed_precision="bf16", gradient_checkpointing=True, ema_decay=0.9)
    res = train(cfg)
    assert all(math.isfinite(v) for v in res.final.values())
    assert res.peak_gpu_gib is not None and res.peak_gpu_gib > 0
    out = export_checkpoint(res.checkpoint, tmp_path / "model")
    pipe = OneStepPipeline.from_pretrained(out, device="cuda")
    img = pipe(["a red circle"], [0], "adapter", torch.randn(1, 1, *pipe.h_shape), torch.ones(1, 1)).images
    assert img.shape == (1, 64, 64, 3)
