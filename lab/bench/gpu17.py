"""Issue 17, one device call: the tuned peer and the fast backend with the full and the small
VAE decoder, end to end at batches 1, 4, 8, 16 in one process, plus the fp8-UNet lever.

``python -m lab.bench.gpu17 --out DIR [--budget-s 280]`` (``lab/bench/gpu17.sh`` wraps
it for the GPU machine). SD-Turbo-sized random weights, fp16 (speed does not depend on the
weights; the small decoder's quality is measured in the toy world, docs/perf.md).

Jobs run in a fixed priority order (``--order``), each only if its estimated cost (a compile
for a new shape class, else ~15 s) fits the remaining budget; a skipped job is listed in the
output with the reason. After every job ``DIR/gpu17.json`` and ``DIR/gpu17.md`` are rewritten,
so a run cut short keeps its rows. Rows carry the same fields as ``ragturbo bench pipeline``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.pipeline import (
    SMALL_SUFFIX,
    BenchOptions,
    _add_ratios,
    fast_config,
    fast_parity,
    fast_row,
    make_fast_backend,
    peer_row,
    reference,
    resolve_device,
)
from bench.report import format_table
from bench.shared import (
    build_feature_store,
    build_gpu_index,
    build_pipeline,
    environment,
    parse_dtype,
)
from bench.timing import TimingPolicy

log = logging.getLogger(__name__)

RUNS = ("fast", "small", "peer")  # fast: full decoder; small: fast + small decoder; peer: tuned peer
# Highest value first: the full-decoder fast path at the target batches, the small decoder
# there, the peer baseline at 16, then the cheap batches (their shapes reuse the dynamic
# compile of the batch-16 one) and the peer's own batch-1 compile last.
DEFAULT_ORDER = ("fast:1", "fast:16", "small:1", "small:16", "peer:16", "fast:4", "fast:8",
                 "small:4", "small:8", "peer:4", "peer:8", "peer:1")
# Seconds, first compile of a shape class on an H100/H200 (docs/perf.md, run 3: fast 62 s at
# batch 1 and 85 s at 16, peer 63 and 98 s; the small decoder reuses the UNet's compiled code).
FIRST_COMPILE_S = {("fast", 1): 70.0, ("fast", 2): 95.0, ("small", 1): 35.0, ("small", 2): 45.0,
                   ("peer", 1): 70.0, ("peer", 2): 105.0}
CHEAP_S = 15.0


def parse_order(text: str) -> list[tuple[str, int]]:
    jobs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        run, _, b = item.partition(":")
        if run not in RUNS or not b.isdigit() or int(b) < 1:
            raise ValueError(f"--order items are RUN:BATCH with RUN in {RUNS}, got {item!r}")
        jobs.append((run, int(b)))
    if not jobs:
        raise ValueError("--order is empty")
    return jobs


def to_markdown(res: dict[str, Any]) -> str:
    lines = ["# Issue 17 GPU run: peer vs fast (full and small VAE decoder) + fp8 UNet", ""]
    if res.get("rows"):
        lines += [format_table(res), ""]
    fp8 = res.get("fp8_unet") or {}
    lines += ["## fp8 linears in the UNet (torch._scaled_mm, eager, per-tensor scales)", "",
              f"status: {fp8.get('status')}, linears replaced: {fp8.get('linears_replaced')}", ""]
    if fp8.get("by_batch"):
        lines += ["| batch | fp16 ms | fp8 ms | speed-up | max abs err | rel L2 | PSNR dB |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for b, r in fp8["by_batch"].items():
            d = r["diff"]
            lines.append(f"| {b} | {r['fp16']['median_ms']:.2f} | {r['fp8']['median_ms']:.2f} | {r['speedup']} | "
                         f"{d['max_abs']:.4g} | {d['rel_l2']:.4g} | {d['psnr_db']} |")
    lines += ["", "## Jobs", ""] + [f"- {j}" for j in res.get("jobs", [])]
    lines += [f"- error: {k}: {v[:400]}" for k, v in (res.get("errors") or {}).items()]
    lines += ["", f"total wall {res.get('wall_s')} s (budget {res.get('budget_s')} s)", ""]
    return "\n".join(lines)


def run(out: str | Path, arch: str = "sd-turbo", order: str = ",".join(DEFAULT_ORDER), budget_s: float = 280.0,
        device_name: str = "auto", dtype_name: str = "fp16", k: int = 4, min_time_s: float = 0.3,
        min_iters: int = 10, fp8: bool = True) -> dict[str, Any]:
    """Run the jobs of ``order`` within ``budget_s``; returns the result (also written to ``out``)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = parse_order(order)
    device = resolve_device(device_name)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    batches = tuple(dict.fromkeys(b for _, b in jobs))
    opts = BenchOptions(arch=arch, batches=batches, variants=("fast", "peer"), device=str(device), dtype=dtype_name,
                        k=k, compile="whole" if cuda else "none", parity_batches=(1,), decoders=("full", "small"), small_variants=("fast",),
                        policy=TimingPolicy(min_time_s=min_time_s, min_iters=min_iters))
    peak = 790.0 if cuda else None
    res: dict[str, Any] = {"options": {"arch": arch, "dtype": dtype_name, "order": order, "k": k},
                           "env": environment(device), "budget_s": budget_s, "rows": [], "skipped": [],
                           "parity": {}, "jobs": [], "errors": {}}

    def save() -> None:
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        _add_ratios(res["rows"])
        (out / "gpu17.json").write_text(json.dumps(res, indent=2, default=str))
        (out / "gpu17.md").write_text(to_markdown(res))

    def guarded(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # one job failing must not lose the others
            log.exception("%s failed", name)
            res["errors"][name] = f"{type(e).__name__}: {e} | {traceback.format_exc()[-600:]}"
            return None
        finally:
            save()

    if fp8:  # eager, no compile: cheap, and the fixed lever of the H200 run of 2026-12-02
        from lab.bench import vae_levers

        res["fp8_unet"] = guarded("fp8_unet", lambda: vae_levers.fp8_unet(
            arch, device, (1, 16), {"min_iters": min_iters, "min_time_s": min_time_s}))
        if cuda:
            torch.cuda.empty_cache()

    pipe, build_s = build_pipeline(arch, device, parse_dtype(dtype_name), seed=0)
    res["model_build_s"] = round(build_s, 1)
    base = build_feature_store(pipe, 8)
    index = build_gpu_index(pipe, base, 1024, "float16")
    res["store"] = {"entries": int(index.n), "shape": list(base.shape[1:]), "k": k, "feature_dtype": "float16"}
    from bench.variants import DiffusersCompiled
    from engines.vae_decoder import random_small_decoder

    full_dec = pipe.vae.decoder
    small_dec = random_small_decoder(pipe.vae, 2, seed=0)
    res["small_decoder"] = {"block_out_channels": [int(b.resnets[0].conv1.out_channels) for b in small_dec.up_blocks][::-1],
                            "weights": "random (speed only)", "width_div": 2}
    ctx_full = reference(pipe, index, opts, parity=True)
    pipe.vae.decoder = small_dec
    ctx_small = reference(pipe, index, opts, parity=True)
    pipe.vae.decoder = full_dec
    res["gflop_per_image"], res["gflop_per_image_small_vae"] = ctx_full["flops"], ctx_small["flops"]
    # The peer copies the modules before the fast runners convert them in place.
    peer = DiffusersCompiled(pipe) if any(r == "peer" for r, _ in jobs) and cuda else None
    backends: dict[str, Any] = {"fast": make_fast_backend(pipe, index, opts, device)}
    pipe.vae.decoder = small_dec
    backends["small"] = make_fast_backend(pipe, index, opts, device)
    pipe.vae.decoder = full_dec
    save()

    scale = 1.0 if arch != "tiny" else 0.05  # the CPU test's tiny model compiles nothing
    compiled: set[tuple[str, int]] = set()
    for run_name, b in jobs:
        cls = 1 if b == 1 else 2
        need = scale * (CHEAP_S if (run_name, cls) in compiled else FIRST_COMPILE_S[(run_name, cls)])
        left = budget_s - (time.perf_counter() - t0)
        if need > left:
            res["skipped"].append(f"{run_name}:{b}: needs ~{need:.0f} s, {left:.0f} s left")
            res["jobs"].append(f"{run_name}:{b} skipped (budget)")
            save()
            continue
        if run_name == "peer" and peer is None:
            res["skipped"].append(f"peer:{b}: CUDA only")
            continue
        t = time.perf_counter()
        if run_name == "peer":
            row = guarded(f"peer:{b}", lambda b=b: peer_row(peer, ctx_full["ref"], b, opts, device,
                                                             ctx_full["gflop_off"], peak))
        else:
            ctx = ctx_full if run_name == "fast" else ctx_small
            name = "fast" if run_name == "fast" else "fast" + SMALL_SUFFIX

            def job(b: int = b, name: str = name, ctx: dict[str, Any] = ctx, run_name: str = run_name) -> Any:
                be = backends[run_name]
                r = fast_row(be, name, b, opts, device, ctx["gflop"], peak, keep=b in ctx["refs"])
                if b in ctx["refs"]:
                    res["parity"][f"{name}_vs_eager_b{b}"] = fast_parity(be, ctx["refs"][b], opts)
                return r

            row = guarded(f"{run_name}:{b}", job)
        compiled.add((run_name, cls))
        if row is not None:
            res["rows"].append(row)
        res["jobs"].append(f"{run_name}:{b} {'ok' if row is not None else 'failed'} in {time.perf_counter() - t:.1f} s")
        save()
    for name, be in backends.items():
        res[f"{'fast' if name == 'fast' else 'fast' + SMALL_SUFFIX}_config"] = fast_config(be)
    save()
    log.info("wrote %s and %s", out / "gpu17.json", out / "gpu17.md")
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", default="sd-turbo")
    ap.add_argument("--order", default=",".join(DEFAULT_ORDER))
    ap.add_argument("--budget-s", type=float, default=280.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--min-time-s", type=float, default=0.3)
    ap.add_argument("--no-fp8", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run(args.out, args.arch, args.order, args.budget_s, args.device, args.dtype,
              min_time_s=args.min_time_s, fp8=not args.no_fp8)
    logging.getLogger(__name__).info("\n%s", to_markdown(res))


if __name__ == "__main__":
    main()
