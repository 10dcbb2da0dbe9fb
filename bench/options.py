"""``ragturbo bench pipeline``'s options (comma lists as typed) -> ``BenchOptions`` -> run -> JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bench.pipeline import DECODERS, VARIANTS, BenchOptions, run_pipeline_bench
from bench.timing import TimingPolicy

log = logging.getLogger(__name__)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from e
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"{what} must be integers >= 1, got {text!r}")
    return vals


def parse_variants(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in VARIANTS]
    if not vals or bad:
        raise ValueError(f"--backend takes a comma list of {VARIANTS}, got {text!r}")
    return vals


def parse_decoders(text: str) -> tuple[str, ...]:
    vals = tuple(v.strip() for v in text.split(",") if v.strip())
    if not vals or any(v not in DECODERS for v in vals):
        raise ValueError(f"--decoder takes a comma list of {DECODERS}, got {text!r}")
    return vals


def bench_pipeline(
    arch: str,
    batch: str,
    backend: str,
    json_out: Path | None,
    device: str = "auto",
    dtype: str = "fp16",
    k: int = 4,
    compile_mode: str = "whole",
    cuda_graphs: bool = True,
    subpixel_vae: bool = True,
    ablate_subpixel: bool = False,
    parity_batch: str = "1,8",
    min_time_s: float = 1.0,
    min_iters: int = 10,
    time_budget_s: float | None = None,
    decoder: str = "full",
    small_decoder_variants: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print the table, write JSON; returns the result dict."""
    opts = BenchOptions(
        arch=arch,
        batches=parse_int_list(batch, "--batch"),
        variants=parse_variants(backend),
        device=device,
        dtype=dtype,
        k=k,
        compile=compile_mode,
        cuda_graphs=cuda_graphs,
        subpixel_vae=subpixel_vae,
        ablate_subpixel=ablate_subpixel,
        parity_batches=parse_int_list(parity_batch, "--parity-batch") if parity_batch else (),
        time_budget_s=time_budget_s,
        decoders=parse_decoders(decoder),
        small_variants=parse_variants(small_decoder_variants) if small_decoder_variants else None,
        policy=TimingPolicy(min_time_s=min_time_s, min_iters=min_iters),
    )

    def write(result: dict[str, Any]) -> None:
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2, default=str))

    result = run_pipeline_bench(opts, checkpoint=write)
    if json_out is not None:
        log.info("wrote %s", json_out)
    return result
