"""What every benchmark variant shares: the random-weight pipeline, the GPU feature
store, the FLOP count of one image, and the card/software description."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
from typing import Any

import torch

from engines.pipeline import OneStepPipeline

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_pipeline(
    arch: str, device: torch.device, dtype: torch.dtype, seed: int = 0, adapter_init_std: float = 0.02
) -> tuple[OneStepPipeline, float]:
    """Random-weight pipeline of ``arch`` built directly on ``device``; returns (pipe, seconds).

    ``adapter_init_std`` perturbs the adapter's zero-initialised output projection so the
    adapter changes the output (parity checks then cover it).
    """
    from engines.random_models import build_random_components

    t0 = time.perf_counter()
    with torch.device(device):
        comps = build_random_components(arch, seed=seed, adapter_init_std=adapter_init_std)
    pipe = OneStepPipeline(**comps, name=f"{arch}-random", fingerprint=f"{arch}-random-{seed}")
    pipe.to(device, dtype)
    for m in pipe.modules().values():
        m.eval().requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return pipe, time.perf_counter() - t0


@torch.inference_mode()
def build_feature_store(pipe: OneStepPipeline, entries: int, seed: int = 0) -> torch.Tensor:
    """(entries, C, h, w) H-features on the pipe's device: real retrieved-branch features
    (UNet encoder at t=0) of a few random latents and captions, tiled to ``entries``."""
    if entries < 1:
        raise ValueError(f"feature store needs >= 1 entry, got {entries}")
    g = torch.Generator().manual_seed(seed)
    n = min(entries, 8)
    c, s = pipe.latent_channels, pipe.latent_size
    lat = torch.randn((n, c, s, s), generator=g).to(pipe.device, pipe.dtype)
    vocab = int(pipe.text_encoder.config.vocab_size)
    ids = torch.randint(0, vocab - 2, (n, pipe.max_length), generator=g).to(pipe.device)
    ctx = pipe.text_encoder(ids).last_hidden_state
    h = pipe.retrieval_features(lat, ctx)
    reps = -(-entries // n)
    return h.repeat(reps, 1, 1, 1)[:entries].contiguous()


@torch.inference_mode()
def build_gpu_index(
    pipe: OneStepPipeline, base: torch.Tensor, entries: int, feature_dtype: str = "float16",
    seed: int = 0, chunk: int = 16384,
) -> Any:
    """The device index the fast backend searches: ``entries`` rows, the real H-features
    ``base`` tiled (in chunks, never materialised whole) beside random unit caption vectors
    (search cost depends on the count, not on the values)."""
    from engines.fast.gpu_index import GpuIndex

    g = torch.Generator(device=pipe.device).manual_seed(seed + 1)
    index = GpuIndex(pipe.embed_dim, pipe.h_shape, entries, pipe.device, pipe.dtype, feature_dtype)
    for i in range(0, entries, chunk):
        m = min(chunk, entries - i)
        emb = torch.randn((m, pipe.embed_dim), generator=g, device=pipe.device)
        rows = torch.arange(i, i + m, device=pipe.device) % base.shape[0]
        index.append(emb, base.index_select(0, rows))
    return index


def count_flops(fns: dict[str, Any]) -> dict[str, float]:
    """GFLOP of each zero-argument callable (torch.utils.flop_counter: matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, float] = {}
    for name, fn in fns.items():
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            fn()
        out[name] = fc.get_total_flops() / 1e9
    return out


def environment(device: torch.device) -> dict[str, Any]:
    """Card and software versions for the report."""
    import diffusers
    import transformers

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            card=p.name,
            card_memory_gib=round(p.total_memory / 2**30, 1),
            sm_count=p.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    else:
        env.update(card=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env
