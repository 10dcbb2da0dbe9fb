"""``ragturbo bench pipeline``: the one-step pipeline's latency and throughput, per batch size.

Variants, timed in one process on one device (docs/perf.md, "Measuring"):

- ``eager``: diffusers eager (the baseline; plain SD-Turbo, no retrieval)
- ``peer``: diffusers + torch.compile(mode="reduce-overhead"), channels-last (CUDA only)
- ``fast``: the ``fast`` backend the service runs (engines.backends.fast_backend over
  engines.fast.FastRunner): token ids -> text -> exact top-k cosine search over
  ``store_entries`` caption vectors on the device -> λ -> gather -> UNet + adapter -> VAE,
  one CUDA graph per bucket; its "retrieval off" twin (no search, gather or adapter) gives
  the retrieval overhead, and ``served_e2e_ms`` times the backend's own call from prompts
  (tokenizing, noise, copies to the host included).

Inputs are token ids and noise already on the device; the timed region ends with uint8
images on the device (the copy to the host and image encoding belong to the service).
Order: eager, parity references, fast, peer; with a time budget, variants that would
not fit are skipped and marked so in the result.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from engines.bench.setup import (
    build_feature_store,
    build_gpu_index,
    build_pipeline,
    count_flops,
    environment,
    parse_dtype,
)
from engines.bench.timing import (
    TimingPolicy,
    median_segments,
    time_callable,
    time_iterations,
)

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("eager", "peer", "fast")


@dataclass
class BenchOptions:
    arch: str = "tiny"
    batches: tuple[int, ...] = (1, 4, 16)
    variants: tuple[str, ...] = ("eager", "peer", "fast")
    device: str = "auto"
    dtype: str = "fp16"
    k: int = 4
    store_entries: int = 1024
    compile: str = "whole"
    cuda_graphs: bool = True
    subpixel_vae: bool = True
    ablate_subpixel: bool = False
    parity_batches: tuple[int, ...] = (1, 8)
    peak_tflops: float | None = None  # None: 790 on CUDA (docs/perf.md), no floor on CPU
    time_budget_s: float | None = None
    feature_dtype: str = "auto"  # device index H-features: float16, float8, auto (float8 > 100K)
    seed: int = 0
    policy: TimingPolicy = field(default_factory=TimingPolicy)

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be >= 1, got {self.batches}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but CUDA is not available")
    return dev


class _Clock:
    def __init__(self, budget_s: float | None) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, need_s: float) -> bool:
        return self.budget_s is None or self.elapsed() + need_s <= self.budget_s


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _row(
    variant: str,
    batch: int,
    stages: dict[str, float],
    e2e: list[float],
    gflop_per_image: float,
    peak_tflops: float | None,
    peak_gib: float | None,
    build_s: float | None,
) -> dict[str, Any]:
    med = statistics.median(e2e)
    floor_ms = gflop_per_image * batch / peak_tflops if peak_tflops else None  # GFLOP / TFLOP/s = ms
    return {
        "variant": variant,
        "batch": batch,
        "stages_ms": {k: round(v, 3) for k, v in stages.items()},
        "e2e_ms": round(med, 3),
        "e2e_min_ms": round(min(e2e), 3),
        "e2e_p90_ms": round(sorted(e2e)[int(0.9 * (len(e2e) - 1))], 3),
        "iters": len(e2e),
        "images_per_s": round(batch * 1e3 / med, 3),
        "floor_ms": round(floor_ms, 3) if floor_ms else None,
        "floor_fraction": round(floor_ms / med, 3) if floor_ms else None,
        "peak_mem_gib": peak_gib,
        "build_s": round(build_s, 1) if build_s is not None else None,
    }


def _parity(ref: dict[str, torch.Tensor], img: torch.Tensor) -> dict[str, float]:
    """uint8 images vs the eager reference: max/mean abs difference, share of pixels off by > 2."""
    a, b = ref["img"].int(), img.int()
    d = (a - b).abs()
    return {
        "max_abs": int(d.max().item()),
        "mean_abs": round(float(d.float().mean().item()), 4),
        "frac_gt2": round(float((d > 2).float().mean().item()), 5),
        "ref_std": round(float(a.float().std().item()), 2),
    }


def run_pipeline_bench(
    opts: BenchOptions, checkpoint: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Build, time every variant at every batch size, and return the result dict (JSON-ready).

    ``checkpoint(result)`` is called after each variant, so a run cut short keeps its rows.
    """
    save = checkpoint or (lambda r: None)
    from engines.fast.runner import FastConfig, FastRunner

    clock = _Clock(opts.time_budget_s)
    device = resolve_device(opts.device)
    dtype = parse_dtype(opts.dtype)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for every variant alike
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = opts.peak_tflops if opts.peak_tflops is not None else (790.0 if device.type == "cuda" else None)
    variants = [v for v in opts.variants if not (v == "peer" and device.type != "cuda")]
    result: dict[str, Any] = {
        "options": {**asdict(opts), "policy": asdict(opts.policy)},
        "env": environment(device),
        "rows": [],
        "skipped": [],
        "parity": {},
        "notes": [],
    }
    log.info("building %s on %s (%s)", opts.arch, device, opts.dtype)
    pipe, build_s = build_pipeline(opts.arch, device, dtype, seed=opts.seed)
    result["model_build_s"] = round(build_s, 1)
    base = build_feature_store(pipe, min(opts.store_entries, 8), seed=opts.seed)
    fdt = opts.feature_dtype if opts.feature_dtype != "auto" else (
        "float8" if opts.store_entries > 100_000 else "float16")
    index = build_gpu_index(pipe, base, opts.store_entries, fdt, seed=opts.seed)
    result["store"] = {"entries": int(index.n), "shape": list(base.shape[1:]), "k": opts.k,
                       "feature_dtype": fdt, "index_gib": round(index.nbytes() / 2**30, 2)}

    # The eager reference runner (same stage functions as the fast one, no levers) for FLOPs and parity.
    ref = FastRunner(pipe, opts.k, config=FastConfig(compile="none", cuda_graphs=False, subpixel_vae=False, channels_last=False), index=index)
    x1 = ref.example_inputs(1, seed=opts.seed)
    with torch.inference_mode():
        ctx1, pooled1 = ref.text(x1["ids"])
        hr1, lam1, _, _ = ref.retrieve(pooled1, x1["kmask"], x1["admask"], x1["injmask"])
        x01 = ref.unet(x1["noise"], ctx1, hr1, lam1, x1["admask"], x1["injmask"])
        fl = count_flops(
            {
                "text": lambda: ref.text(x1["ids"]),
                "search": lambda: ref.retrieve(pooled1, x1["kmask"], x1["admask"], x1["injmask"]),
                "unet+adapter": lambda: ref.unet(x1["noise"], ctx1, hr1, lam1, x1["admask"], x1["injmask"]),
                "unet": lambda: ref.unet(x1["noise"], ctx1),
                "vae": lambda: ref.vae(x01),
            }
        )
    gflop_img = fl["text"] + fl["search"] + fl["unet+adapter"] + fl["vae"]
    gflop_img_off = fl["text"] + fl["unet"] + fl["vae"]
    result["gflop_per_image"] = {k: round(v, 3) for k, v in fl.items()} | {"total": round(gflop_img, 3)}
    log.info("GFLOP per image: %s", result["gflop_per_image"])

    refs: dict[int, dict[str, torch.Tensor]] = {}
    if "fast" in variants:
        for b in opts.parity_batches:
            x = ref.example_inputs(b, seed=opts.seed + b)
            with torch.inference_mode():
                refs[b] = {"img": ref.full_search(*x.values())[0], **x}

    result["errors"] = {}

    def guarded(name: str, fn: Callable[[], Any]) -> Any:
        # One variant failing (e.g. a compiler error) must not lose the others' rows.
        try:
            return fn()
        except Exception as e:
            log.exception("variant %s failed", name)
            result["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            return None
        finally:
            _add_ratios(result["rows"])
            save(result)

    def emit(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        _add_ratios(result["rows"])
        save(result)

    if "eager" in variants:
        guarded("eager", lambda: _eager_rows(pipe, ref, opts, device, gflop_img_off, peak, emit))
    peer_model = None
    if "peer" in variants:
        from engines.bench.variants import DiffusersCompiled

        peer_model = DiffusersCompiled(pipe)  # copies taken before the fast runner changes the modules
    if "fast" in variants:
        guarded(
            "fast",
            lambda: _fast_rows(pipe, index, opts, device, gflop_img, gflop_img_off, peak, refs, result, clock, emit),
        )
    if peer_model is not None:
        guarded("peer", lambda: _peer_rows(peer_model, ref, opts, device, gflop_img_off, peak, result, clock, emit))
        del peer_model
    if "fast" in variants and opts.ablate_subpixel:
        guarded("subpixel-ablation", lambda: _subpixel_ablation(pipe, index, opts, device, result, clock))
    _add_ratios(result["rows"])
    save(result)
    result["elapsed_s"] = round(clock.elapsed(), 1)
    return result


def _eager_rows(pipe, ref, opts, device, gflop, peak, emit) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from engines.bench.variants import DiffusersEager

    eager = DiffusersEager(pipe)
    rows = []
    for b in opts.batches:
        x = ref.example_inputs(b, seed=opts.seed + b)
        _reset_peak(device)
        runs = time_iterations(lambda m, x=x: eager.iteration(x, m), device, opts.policy)
        med = median_segments(runs)
        stages = {"text": med["text"], "retrieval": 0.0, "unet": med["unet"], "vae": med["vae"]}
        rows.append(_row("diffusers-eager", b, stages, [r["total"] for r in runs], gflop, peak, _peak_gib(device), 0.0))
        log.info("eager b=%d: %.2f ms", b, rows[-1]["e2e_ms"])
        emit(rows[-1])
    return rows


def _fast_rows(pipe, index, opts, device, gflop, gflop_off, peak, refs, result, clock, emit) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from engines.backends.fast_backend import FastBackend

    backend = FastBackend(
        pipe, compile=opts.compile, cuda_graphs=opts.cuda_graphs and device.type == "cuda",
        subpixel_vae=opts.subpixel_vae,
        buckets=opts.batches, k_buckets=(opts.k,),
    )
    runner = backend.runner
    runner.set_index(index)
    cfg = runner.cfg
    name = "fast"
    rows = []
    for b in opts.batches:
        _reset_peak(device)
        t_build = runner.prepare(b, "search", stages=True) + runner.prepare(b, "plain")
        peak_gib = _peak_gib(device)
        stages = {
            s: statistics.median(time_callable(runner.stage_callable(b, s), device, opts.policy))
            for s in ("text", "retrieval", "unet", "vae")
        }
        e2e = time_callable(runner.stage_callable(b, "full"), device, opts.policy)
        rows.append(_row(name, b, stages, e2e, gflop, peak, peak_gib, t_build))
        off = time_callable(runner.stage_callable(b, "full", "plain"), device, opts.policy)
        # Interleave a second on-measurement so drift between the two does not pass for overhead.
        e2e2 = time_callable(runner.stage_callable(b, "full"), device, opts.policy)
        on_ms = statistics.median(e2e + e2e2)
        off_ms = statistics.median(off)
        rows[-1]["retrieval_off_e2e_ms"] = round(off_ms, 3)
        rows[-1]["retrieval_overhead_pct"] = round(100.0 * (on_ms - off_ms) / off_ms, 2)
        # The backend's own call, as the service makes it: prompts in, host uint8 out.
        prompts = [f"a served prompt {i}" for i in range(b)]
        served = time_callable(
            lambda p=prompts: backend.generate_search(p, list(range(len(p))), ["adapter"] * len(p),
                                                      [opts.k] * len(p), 0.0),
            device, opts.policy,
        )
        rows[-1]["served_e2e_ms"] = round(statistics.median(served), 3)
        log.info("fast b=%d: %.2f ms (off %.2f ms, served %.2f ms), build %.1f s", b,
                 rows[-1]["e2e_ms"], off_ms, rows[-1]["served_e2e_ms"], t_build)
        emit(rows[-1])
        runner.drop_stage_graphs()
        for key in [k for k in runner.buckets if k[0] == b and b not in refs]:
            del runner.buckets[key]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for b, r in refs.items():
        if (b, "search", opts.k) not in runner.buckets:
            runner.prepare(b, "search")
        img = runner.run("search", **{n: r[n] for n in ("ids", "noise", "kmask", "admask", "injmask")})[0]
        result["parity"][f"fast_vs_eager_b{b}"] = _parity(r, img)
    result["fast_build_s"] = round(runner.build_s, 1)
    result["fast_config"] = {
        **{k: getattr(cfg, k) for k in ("compile", "cuda_graphs", "subpixel_vae", "channels_last")},
        "compiled_modules": runner.compiled_modules,
        "subpixel_layers": runner.subpixel_layers,
    }
    runner.release()
    return rows


def _subpixel_ablation(pipe, index, opts, device, result, clock) -> None:  # type: ignore[no-untyped-def]
    """VAE stage time with the plain Upsample2D layers (same compile and graphs)."""
    from engines.fast.runner import FastConfig, FastRunner

    cfg = FastConfig(compile=opts.compile, cuda_graphs=opts.cuda_graphs, subpixel_vae=False)
    runner = FastRunner(pipe, opts.k, config=cfg, index=index)
    out = {}
    for b in opts.batches:
        if not clock.allows(60.0):
            result["skipped"].append(f"subpixel ablation b={b}: time budget")
            continue
        runner.prepare(b, "search", stages=True)
        vae_ms = statistics.median(time_callable(runner.stage_callable(b, "vae"), device, opts.policy))
        e2e = statistics.median(time_callable(runner.stage_callable(b, "full"), device, opts.policy))
        out[b] = {"vae_ms": round(vae_ms, 3), "e2e_ms": round(e2e, 3)}
        runner.buckets.clear()
    result["subpixel_off"] = out
    runner.release()


def _peer_rows(peer, ref, opts, device, gflop, peak, result, clock, emit) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    rows: list[dict[str, Any]] = []
    last_build = 0.0
    for b in opts.batches:
        # a first compile of the SD-Turbo-sized modules takes minutes (docs/perf.md: 245 s)
        need = 1.2 * last_build + 20.0 if last_build else (150.0 if opts.arch != "tiny" else 30.0)
        if not clock.allows(need):
            result["skipped"].append(f"{peer.name} b={b}: time budget ({clock.elapsed():.0f} s used)")
            continue
        x = ref.example_inputs(b, seed=opts.seed + b)
        _reset_peak(device)
        t_build = peer.warm(x, device)
        last_build = t_build
        runs = time_iterations(lambda m, x=x: peer.iteration(x, m), device, opts.policy)
        med = median_segments(runs)
        stages = {"text": med["text"], "retrieval": 0.0, "unet": med["unet"], "vae": med["vae"]}
        rows.append(_row(peer.name, b, stages, [r["total"] for r in runs], gflop, peak, _peak_gib(device), t_build))
        emit(rows[-1])
        log.info("peer b=%d: %.2f ms, warm/compile %.1f s", b, rows[-1]["e2e_ms"], t_build)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup = baseline e2e / variant e2e at the same batch; vs_peer likewise."""
    base = {r["batch"]: r["e2e_ms"] for r in rows if r["variant"] == "diffusers-eager"}
    peer = {r["batch"]: r["e2e_ms"] for r in rows if r["variant"].startswith("diffusers-compile")}
    for r in rows:
        b = r["batch"]
        r["speedup_vs_eager"] = round(base[b] / r["e2e_ms"], 2) if b in base else None
        r["speedup_vs_peer"] = round(peer[b] / r["e2e_ms"], 2) if b in peer else None
