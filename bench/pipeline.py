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

``decoders`` ("full", "small"): every variant in ``small_variants`` is also timed with a
small VAE decoder (random weights, every width divided by ``small_width_div``, speed only)
swapped into the same pipeline; its rows are named ``<variant>+small-vae`` and their
ratios are against the full-decoder eager and peer rows of the same run.

Inputs are token ids and noise already on the device; the timed region ends with uint8
images on the device (the copy to the host and image encoding belong to the service).
Order: eager, parity references, fast (full, then small decoder), peer (likewise); with a
time budget, rows that would not fit are skipped and marked so in the result.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bench.shared import (
    build_feature_store,
    build_gpu_index,
    build_pipeline,
    count_flops,
    environment,
    parse_dtype,
)
from bench.timing import (
    TimingPolicy,
    median_segments,
    time_callable,
    time_iterations,
)

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("eager", "peer", "fast")
DECODERS: tuple[str, ...] = ("full", "small")
SMALL_SUFFIX = "+small-vae"


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
    decoders: tuple[str, ...] = ("full",)
    small_variants: tuple[str, ...] | None = None  # None: every variant also runs "small"
    small_width_div: int = 2
    policy: TimingPolicy = field(default_factory=TimingPolicy)

    def __post_init__(self) -> None:
        bad_d = [d for d in self.decoders if d not in DECODERS]
        if not self.decoders or bad_d:
            raise ValueError(f"decoders must be a non-empty subset of {DECODERS}, got {self.decoders}")
        bad_s = [v for v in (self.small_variants or ()) if v not in VARIANTS]
        if bad_s:
            raise ValueError(f"unknown small-decoder variant(s) {bad_s}; choose from {VARIANTS}")
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

    small_dec = None
    if "small" in opts.decoders:
        from engines.vae_decoder import random_small_decoder

        small_dec = random_small_decoder(pipe.vae, opts.small_width_div, seed=opts.seed)
        result["small_decoder"] = {
            "block_out_channels": [int(b.resnets[0].conv1.out_channels) for b in small_dec.up_blocks][::-1],
            "weights": "random (speed only)", "width_div": opts.small_width_div,
        }
    full_dec = pipe.vae.decoder

    def runs(variant: str) -> list[tuple[str, str]]:
        """(decoder, row-name suffix) pairs ``variant`` is timed with."""
        out = [("full", "")] if "full" in opts.decoders else []
        if small_dec is not None and (opts.small_variants is None or variant in opts.small_variants):
            out.append(("small", SMALL_SUFFIX))
        return out

    def use(decoder: str) -> None:
        pipe.vae.decoder = small_dec if decoder == "small" else full_dec

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

    # Per decoder: the eager reference runner (same stage functions as the fast one, no
    # levers) for FLOPs and parity, built while that decoder is in the pipeline.
    ctx: dict[str, dict[str, Any]] = {}
    for dec in [d for d in DECODERS if any(d == r[0] for v in variants for r in runs(v))]:
        use(dec)
        ctx[dec] = reference(pipe, index, opts, "fast" in variants and any(r[0] == dec for r in runs("fast")))
        tag = "" if dec == "full" else "_small_vae"
        result[f"gflop_per_image{tag}"] = ctx[dec]["flops"]
        log.info("GFLOP per image (%s decoder): %s", dec, ctx[dec]["flops"])
    use("full")

    # Peers copy the modules before any fast runner changes them (channels-last, compile).
    peers: dict[str, Any] = {}
    if "peer" in variants:
        from bench.variants import DiffusersCompiled

        for dec, _ in runs("peer"):
            use(dec)
            peers[dec] = DiffusersCompiled(pipe)
        use("full")
    if "eager" in variants:
        for dec, suffix in runs("eager"):
            use(dec)
            c = ctx[dec]
            guarded("eager" + suffix, lambda c=c, suffix=suffix: _eager_rows(
                pipe, c["ref"], opts, device, c["gflop_off"], peak, emit, suffix))
    if "fast" in variants:
        for dec, suffix in runs("fast"):
            use(dec)
            c = ctx[dec]
            guarded("fast" + suffix, lambda c=c, suffix=suffix: _fast_rows(
                pipe, index, opts, device, c["gflop"], c["gflop_off"], peak, c["refs"], result, clock, emit,
                suffix))
    for dec, peer_model in peers.items():
        c = ctx[dec]
        suffix = SMALL_SUFFIX if dec == "small" else ""
        guarded("peer" + suffix, lambda p=peer_model, c=c, suffix=suffix: _peer_rows(
            p, c["ref"], opts, device, c["gflop_off"], peak, result, clock, emit, suffix))
    peers.clear()
    use("full")
    if "fast" in variants and opts.ablate_subpixel:
        guarded("subpixel-ablation", lambda: _subpixel_ablation(pipe, index, opts, device, result, clock))
    _add_ratios(result["rows"])
    save(result)
    return result


def reference(pipe: Any, index: Any, opts: BenchOptions, parity: bool) -> dict[str, Any]:
    """The eager reference runner of the pipeline's current decoder, its FLOPs per image
    and (``parity``) the reference images of the parity batches."""
    from engines.fast.runner import FastConfig, FastRunner

    ref = FastRunner(pipe, opts.k, config=FastConfig(compile="none", cuda_graphs=False, subpixel_vae=False,
                                                     channels_last=False), index=index)
    x1 = ref.example_inputs(1, seed=opts.seed)
    with torch.inference_mode():
        ctx1, pooled1 = ref.text(x1["ids"])
        hr1, lam1, _, _ = ref.retrieve(pooled1, x1["kmask"], x1["ctrl"])
        x01 = ref.unet(x1["noise"], ctx1, hr1, lam1, x1["ctrl"])
        fl = count_flops(
            {
                "text": lambda: ref.text(x1["ids"]),
                "search": lambda: ref.retrieve(pooled1, x1["kmask"], x1["ctrl"]),
                "unet+adapter": lambda: ref.unet(x1["noise"], ctx1, hr1, lam1, x1["ctrl"]),
                "unet": lambda: ref.unet(x1["noise"], ctx1),
                "vae": lambda: ref.vae(x01),
            }
        )
    gflop = fl["text"] + fl["search"] + fl["unet+adapter"] + fl["vae"]
    refs: dict[int, dict[str, torch.Tensor]] = {}
    for b in opts.parity_batches if parity else ():
        x = ref.example_inputs(b, seed=opts.seed + b)
        with torch.inference_mode():
            refs[b] = {"img": ref.full_search(*x.values())[0], **x}
    return {"ref": ref, "gflop": gflop, "gflop_off": fl["text"] + fl["unet"] + fl["vae"], "refs": refs,
            "flops": {k: round(v, 3) for k, v in fl.items()} | {"total": round(gflop, 3)}}


def _eager_rows(pipe, ref, opts, device, gflop, peak, emit, suffix="") -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from bench.variants import DiffusersEager

    eager = DiffusersEager(pipe)
    rows = []
    for b in opts.batches:
        x = ref.example_inputs(b, seed=opts.seed + b)
        _reset_peak(device)
        runs = time_iterations(lambda m, x=x: eager.iteration(x, m), device, opts.policy)
        med = median_segments(runs)
        stages = {"text": med["text"], "retrieval": 0.0, "unet": med["unet"], "vae": med["vae"]}
        rows.append(_row("diffusers-eager" + suffix, b, stages, [r["total"] for r in runs], gflop, peak, _peak_gib(device), 0.0))
        log.info("eager b=%d: %.2f ms", b, rows[-1]["e2e_ms"])
        emit(rows[-1])
    return rows


def make_fast_backend(pipe: Any, index: Any, opts: BenchOptions, device: torch.device) -> Any:
    """The ``fast`` backend over ``pipe`` (its current VAE decoder) searching ``index``."""
    from engines.backends.fast_backend import FastBackend

    backend = FastBackend(
        pipe, compile=opts.compile, cuda_graphs=opts.cuda_graphs and device.type == "cuda",
        subpixel_vae=opts.subpixel_vae,
        buckets=opts.batches, k_buckets=(opts.k,),
    )
    backend.runner.set_index(index)
    return backend


def fast_row(backend: Any, name: str, b: int, opts: BenchOptions, device: torch.device, gflop: float,
             peak: float | None, keep: bool = False) -> dict[str, Any]:
    """One row of the fast backend at batch ``b``: build (compile + capture), stage times, end to
    end, retrieval off, and the backend's own served call. ``keep``: leave the search bucket
    captured (for a parity check after)."""
    from engines.request import Batch, ImageRequest

    runner = backend.runner
    _reset_peak(device)
    t_build = runner.prepare(b, "search", stages=True) + runner.prepare(b, "plain")
    peak_gib = _peak_gib(device)
    stages = {
        s: statistics.median(time_callable(runner.stage_callable(b, s), device, opts.policy))
        for s in ("text", "retrieval", "unet", "vae")
    }
    e2e = time_callable(runner.stage_callable(b, "full"), device, opts.policy)
    row = _row(name, b, stages, e2e, gflop, peak, peak_gib, t_build)
    off = time_callable(runner.stage_callable(b, "full", "plain"), device, opts.policy)
    # Interleave a second on-measurement so drift between the two does not pass for overhead.
    e2e2 = time_callable(runner.stage_callable(b, "full"), device, opts.policy)
    on_ms = statistics.median(e2e + e2e2)
    off_ms = statistics.median(off)
    row["retrieval_off_e2e_ms"] = round(off_ms, 3)
    row["retrieval_overhead_pct"] = round(100.0 * (on_ms - off_ms) / off_ms, 2)
    # The backend's own call, as the service makes it: prompts in, host uint8 out.
    prompts = [f"a served prompt {i}" for i in range(b)]
    served = time_callable(
        lambda p=prompts: backend.generate(
            Batch(tuple(ImageRequest(q, i, "adapter", opts.k) for i, q in enumerate(p)), search=0.0)),
        device, opts.policy,
    )
    row["served_e2e_ms"] = round(statistics.median(served), 3)
    log.info("%s b=%d: %.2f ms (off %.2f ms, served %.2f ms), build %.1f s", name, b,
             row["e2e_ms"], off_ms, row["served_e2e_ms"], t_build)
    runner.drop_stage_graphs()
    if not keep:
        for key in [k for k in runner.buckets if k[0] == b]:
            del runner.buckets[key]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def fast_parity(backend: Any, ref: dict[str, torch.Tensor], opts: BenchOptions) -> dict[str, float]:
    """The fast backend's images against the eager reference images ``ref`` (same inputs)."""
    runner = backend.runner
    b = int(ref["ids"].shape[0])
    if (b, "search", opts.k) not in runner.buckets:
        runner.prepare(b, "search")
    img = runner.run("search", **{n: ref[n] for n in ("ids", "noise", "kmask", "ctrl")})[0]
    return _parity(ref, img)


def fast_config(backend: Any) -> dict[str, Any]:
    runner = backend.runner
    return {
        **{k: getattr(runner.cfg, k) for k in ("compile", "cuda_graphs", "subpixel_vae", "channels_last")},
        "compiled_modules": runner.compiled_modules,
        "subpixel_layers": runner.subpixel_layers,
    }


def _fast_rows(pipe, index, opts, device, gflop, gflop_off, peak, refs, result, clock, emit, suffix="") -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    backend = make_fast_backend(pipe, index, opts, device)
    name = "fast" + suffix
    # a first whole compile of the SD-Turbo-sized modules takes about a minute (docs/perf.md)
    rows = _budgeted_rows(name, opts, (90.0 if opts.arch != "tiny" else 10.0, 15.0), result, clock, emit,
                          lambda b: fast_row(backend, name, b, opts, device, gflop, peak, keep=b in refs))
    for b, r in refs.items():
        result["parity"][f"{name}_vs_eager_b{b}"] = fast_parity(backend, r, opts)
    result[f"{name}_build_s"] = round(backend.runner.build_s, 1)
    result[f"{name}_config"] = fast_config(backend)
    backend.runner.release()
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


def peer_row(peer: Any, ref: Any, b: int, opts: BenchOptions, device: torch.device, gflop: float,
             peak: float | None, suffix: str = "") -> dict[str, Any]:
    """One row of the tuned peer at batch ``b`` (its compile for this shape included in build s)."""
    x = ref.example_inputs(b, seed=opts.seed + b)
    _reset_peak(device)
    t_build = peer.warm(x, device)
    runs = time_iterations(lambda m, x=x: peer.iteration(x, m), device, opts.policy)
    med = median_segments(runs)
    stages = {"text": med["text"], "retrieval": 0.0, "unet": med["unet"], "vae": med["vae"]}
    row = _row(peer.name + suffix, b, stages, [r["total"] for r in runs], gflop, peak, _peak_gib(device), t_build)
    log.info("peer%s b=%d: %.2f ms, warm/compile %.1f s", suffix, b, row["e2e_ms"], t_build)
    return row


def _peer_rows(peer, ref, opts, device, gflop, peak, result, clock, emit, suffix="") -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    # a first compile of the SD-Turbo-sized modules takes minutes (docs/perf.md: 245 s)
    return _budgeted_rows(peer.name + suffix, opts, (150.0 if opts.arch != "tiny" else 30.0, 20.0), result, clock,
                          emit, lambda b: peer_row(peer, ref, b, opts, device, gflop, peak, suffix))


def _budgeted_rows(name: str, opts: BenchOptions, need_s: tuple[float, float], result: dict[str, Any], clock: Any,
                   emit: Any, make: Any) -> list[dict[str, Any]]:
    """``make(b)`` for each batch of ``opts.batches`` while the clock allows it: the first needs
    ``need_s[0]`` seconds (a cold compile), later ones 1.2 × the last build + ``need_s[1]``;
    a batch that does not fit is listed in ``result["skipped"]``, not silently dropped."""
    rows: list[dict[str, Any]] = []
    last_build = 0.0
    for b in opts.batches:
        need = 1.2 * last_build + need_s[1] if last_build else need_s[0]
        if not clock.allows(need):
            result["skipped"].append(f"{name} b={b}: time budget ({clock.elapsed():.0f} s used)")
            continue
        rows.append(make(b))
        last_build = rows[-1]["build_s"] or 0.0
        emit(rows[-1])
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup = baseline e2e / variant e2e at the same batch; vs_peer likewise."""
    base = {r["batch"]: r["e2e_ms"] for r in rows if r["variant"] == "diffusers-eager"}
    peer = {r["batch"]: r["e2e_ms"] for r in rows if r["variant"] == "diffusers-compile-ro"}
    for r in rows:
        b = r["batch"]
        r["speedup_vs_eager"] = round(base[b] / r["e2e_ms"], 2) if b in base else None
        r["speedup_vs_peer"] = round(peer[b] / r["e2e_ms"], 2) if b in peer else None
