"""How much float8 storage of H-features in the device index costs: ``ragturbo bench fp8``.

``engines.fast.gpu_index.GpuIndex(feature_dtype="float8")`` keeps each stored H-feature as
float8 e4m3 with one float32 scale per row (row amax -> 448). This module measures the
round trip on the toy model's REAL H-features (``OneStepPipeline.retrieval_features`` of
the VAE latents of rendered retrieval-split images with their captions' context, as
ingest makes them, then rounded to float16 as the feature store keeps them) against the
float16 copy, the same on random normal features as a reference, the effect on generated
images (adapter mode, top-k neighbours found by the index itself, λ = score), and the
memory per pair at SD-Turbo size.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

from engines.rules import neighbour_lambda

SD_TURBO_H = (1280, 8, 8)
SD_TURBO_DIM = 1024
PAPER_PAIRS = 630_000


@dataclass
class RoundTrip:
    source: str
    rows: int
    shape: str
    rel_l2_mean: float
    rel_l2_p99: float
    rel_l2_max: float
    max_abs: float
    max_abs_over_row_amax: float  # worst |error| / that row's amax


@dataclass
class ImageEffect:
    variant: str
    prompts: int
    k: int
    max_diff: int
    mean_diff: float
    share_gt1: float  # share of pixel channels differing by more than 1 uint8 level
    ref_off_mean_diff: float  # fp16 retrieval vs mode off: what retrieval changes at all
    ref_off_share_gt1: float


def real_features(pipe: object, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """H-features (n,C,h,w) float16 (as stored) + pooled caption embeddings (n,D) of the first
    n retrieval-split pairs, made as ingest makes them."""
    from toyworld.models.data import make_split

    sp = make_split("retrieval", n, workers=1)
    feats, pooled = [], []
    for s in range(0, n, 64):
        caps = sp.captions[s : s + 64]
        text = pipe.encode_text(caps)  # type: ignore[attr-defined]
        lat = pipe.encode_images(sp.images[s : s + 64])  # type: ignore[attr-defined,index]
        h = pipe.retrieval_features(lat, text.context)  # type: ignore[attr-defined]
        feats.append(h.to(torch.float16).cpu())
        pooled.append(text.pooled.float().cpu())
    return torch.cat(feats), torch.cat(pooled), list(sp.captions)


def make_index(pooled: torch.Tensor, feats: torch.Tensor, feature_dtype: str) -> object:
    """A CPU GpuIndex (compute dtype float16, as on the device) holding the rows."""
    from engines.fast.gpu_index import GpuIndex

    idx = GpuIndex(
        pooled.shape[1],
        tuple(feats.shape[1:]),
        len(feats),
        torch.device("cpu"),
        dtype=torch.float16,
        feature_dtype=feature_dtype,  # type: ignore[arg-type]
    )
    idx.append(pooled, feats)
    return idx


def round_trip(feats: torch.Tensor, feature_dtype: str = "float8") -> torch.Tensor:
    """feats (n,C,h,w) -> what ``GpuIndex.gather`` returns for them, float32."""
    n = len(feats)
    idx = make_index(torch.ones((n, 1)), feats, feature_dtype)
    return idx.gather(torch.arange(n)[:, None])[:, 0].float()  # type: ignore[attr-defined]


def roundtrip_error(source: str, ref: torch.Tensor, got: torch.Tensor) -> RoundTrip:
    r, g = ref.float().flatten(1), got.float().flatten(1)
    err = g - r
    rel = err.norm(dim=1) / r.norm(dim=1).clamp_min(1e-12)
    amax = r.abs().amax(1).clamp_min(1e-12)
    return RoundTrip(
        source,
        len(r),
        "x".join(map(str, ref.shape[1:])),
        round(float(rel.mean()), 5),
        round(float(torch.quantile(rel, 0.99)), 5),
        round(float(rel.max()), 5),
        round(float(err.abs().max()), 5),
        round(float((err.abs().amax(1) / amax).max()), 5),
    )


def image_effect(
    pipe: object,
    pooled: torch.Tensor,
    feats: torch.Tensor,
    prompts: Sequence[str],
    k: int = 2,
    mode: str = "adapter",
    variant: str = "",
    batch: int = 32,
) -> ImageEffect:
    """Generate each prompt (``mode``, seed = its position) with the top-k neighbours'
    H-features gathered from a float16 and from a float8 index; compare the uint8 images
    (and the fp16 images with mode "off", for scale)."""
    i16, i8 = make_index(pooled, feats, "float16"), make_index(pooled, feats, "float8")
    diffs, offd = [], []
    for s in range(0, len(prompts), batch):
        ps = list(prompts[s : s + batch])
        seeds = list(range(s, s + len(ps)))
        text = pipe.encode_text(ps)  # type: ignore[attr-defined]
        scores, rows = i16.search(text.pooled, k)  # type: ignore[attr-defined]
        lam = neighbour_lambda(scores)
        gen = pipe.generate  # type: ignore[attr-defined]
        a = gen(text, seeds, mode, i16.gather(rows), lam).images  # type: ignore[attr-defined]
        b = gen(text, seeds, mode, i8.gather(rows), lam).images  # type: ignore[attr-defined]
        o = gen(text, seeds, "off").images
        diffs.append(np.abs(a.astype(np.int16) - b.astype(np.int16)))
        offd.append(np.abs(a.astype(np.int16) - o.astype(np.int16)))
    d, od = np.concatenate(diffs), np.concatenate(offd)
    return ImageEffect(
        variant or mode,
        len(prompts),
        k,
        int(d.max()),
        round(float(d.mean()), 5),
        round(float((d > 1).mean()), 6),
        round(float(od.mean()), 3),
        round(float((od > 1).mean()), 4),
    )


@contextmanager
def random_proj_out(pipe: object, seed: int = 0) -> Iterator[None]:
    """Temporarily give the adapter's zero-initialised output projection random weights
    (N(0, 1/C), like its other layers): a stand-in for a trained adapter whose output
    depends on the retrieved features. Restored on exit."""
    lin = pipe.hadapter.proj_out  # type: ignore[attr-defined]
    w, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
    g = torch.Generator().manual_seed(seed)
    c = w.shape[1]
    with torch.no_grad():
        lin.weight.copy_(torch.randn(w.shape, generator=g) / c**0.5)
    try:
        yield
    finally:
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(bias)


def memory_per_pair(
    dim: int = SD_TURBO_DIM, h_shape: tuple[int, int, int] = SD_TURBO_H, pairs: int = PAPER_PAIRS
) -> dict[str, dict[str, float]]:
    """GpuIndex bytes (meta device: nothing allocated) per pair and for ``pairs`` pairs."""
    from engines.fast.gpu_index import GpuIndex

    out = {}
    for fd in ("float16", "float8"):
        n = 1000
        idx = GpuIndex(dim, h_shape, n, torch.device("meta"), dtype=torch.float16, feature_dtype=fd)  # type: ignore[arg-type]
        per = idx.nbytes() / n
        feat = idx.feat.element_size() * idx.feat[0].numel() + (4 if fd == "float8" else 0)
        out[fd] = {
            "bytes_per_pair": per,
            "feature_bytes_per_pair": float(feat),
            "total_GB": per * pairs / 1e9,
            "total_GiB": per * pairs / 2**30,
        }
    return out


def run_fp8(n: int = 1024, prompts: int = 256, k: int = 2, model_dir: str | None = None) -> dict:
    """Everything of the docs/perf.md table, as a dict."""
    from bench.recall import query_prompts
    from engines.default_model import shipped_model_dir
    from engines.pipeline import OneStepPipeline

    torch.manual_seed(0)
    pipe = OneStepPipeline.from_pretrained(model_dir or shipped_model_dir())
    t0 = time.perf_counter()
    feats, pooled, _ = real_features(pipe, n)
    rows = [
        roundtrip_error("toy H-features (real)", feats, round_trip(feats, "float8")),
        roundtrip_error("toy H-features, fp16 index", feats, round_trip(feats, "float16")),
    ]
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn((n, *feats.shape[1:]), generator=g).to(torch.float16)
    rows.append(roundtrip_error("random normal, toy shape", rnd, round_trip(rnd, "float8")))
    big = torch.randn((64, *SD_TURBO_H), generator=g).to(torch.float16)
    rows.append(roundtrip_error("random normal, SD-Turbo shape", big, round_trip(big, "float8")))
    qp = query_prompts(prompts)
    zero_proj = bool((pipe.hadapter.proj_out.weight == 0).all())
    effects = [
        image_effect(
            pipe, pooled, feats, qp, k=k, mode="adapter", variant="adapter, shipped weights"
        ),
        image_effect(pipe, pooled, feats, qp, k=1, mode="inject", variant="inject (slerp, top-1)"),
    ]
    with random_proj_out(pipe):
        effects.append(
            image_effect(
                pipe, pooled, feats, qp, k=k, mode="adapter", variant="adapter, random proj_out"
            )
        )
    stats = {
        "amax_over_rms_mean": float(
            (
                feats.float().flatten(1).abs().amax(1)
                / feats.float().flatten(1).pow(2).mean(1).sqrt()
            ).mean()
        ),
        "share_zero": float((feats == 0).float().mean()),
    }
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": str(model_dir or shipped_model_dir()),
        "pairs": n,
        "h_shape": list(feats.shape[1:]),
        "feature_stats": stats,
        "roundtrip": [asdict(r) for r in rows],
        "adapter_proj_out_all_zero": zero_proj,
        "images": [asdict(e) for e in effects],
        "memory": memory_per_pair(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
