"""``ragturbo bench service --device cuda``: the served GPU path over HTTP, beside in-process.

One GPU run: an SD-Turbo-sized model with random weights (speed does not depend on the
values) is written once; for each database size N, ``ragturbo serve`` starts with the
``fast`` backend and N synthetic stored pairs on the device (retrieval on: the exact
search over N caption vectors runs inside the graph), is loaded over loopback by
closed-loop clients at each concurrency (JPEG, k=1, mode adapter, distinct prompts and
seeds), and reports p50/p99, images/s, the mean batch and the stage breakdown read from
its /metrics. Start-up is timed to the first /readyz 200: the first start compiles (cold
cache), later ones reuse the compile cache on disk (warm). Then, with the servers gone,
the in-process pipeline bench (the same backend, the tuned peer and eager) runs in the
same process so every row of the report comes from one run on one card.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from bench.http import (
    closed_loop,
    free_port,
    mean_between,
    pct,
    read_histograms,
    start_server,
    stop_server,
)

STAGES = ("text", "retrieval", "unet", "vae", "encode")


def _load(url: str, clients: int, seconds: float, fmt: str, k: int) -> tuple[list[float], int]:
    """Closed-loop requests with retrieval; an answer without retrieval counts as an error."""
    def body(i: int, n: int) -> dict[str, Any]:
        return {"prompt": f"a photo of object {i} number {n}", "seed": n, "format": fmt,
                "retrieval": {"mode": "adapter", "k": k}}

    def ok(r: Any) -> bool:
        return r.status_code == 200 and r.json().get("retrieval_status") == "ok"

    return closed_loop(url, clients, seconds, body, ok)


def write_random_model(out: Path, arch: str = "sd-turbo", device: str = "cuda") -> Path:
    """Random weights of ``arch`` on disk (SD-Turbo size: built on the GPU, saved in fp16)."""
    import torch

    from engines.random_models import build_random_components, save_components

    if (out / "model_index.json").is_file():
        return out
    with torch.device(device):
        comps = build_random_components(arch, seed=0, adapter_init_std=0.02)
    for key in ("text_encoder", "unet", "vae", "hadapter"):
        m = comps[key].cpu()
        comps[key] = m.half() if device.startswith("cuda") else m
    return save_components(comps, out, name=f"{arch}-random-0")


def bench_service_cuda(
    clients: list[int], pairs: list[int], seconds: float, work: Path, fmt: str, k: int,
    max_batch: int, max_wait_ms: float, buckets: str, feature_dtype_big: str,
    inprocess_batches: list[int], inprocess_budget_s: float, startup_timeout_s: float,
    arch: str = "sd-turbo", device: str = "cuda", inprocess_variants: tuple[str, ...] = ("eager", "peer", "fast"),
    clients_after_first: list[int] | None = None,
) -> dict[str, Any]:
    """The GPU run (``arch``/``device`` other than sd-turbo/cuda only for the CPU test)."""
    work.mkdir(parents=True, exist_ok=True)
    # One compile cache for the servers and the in-process rows (set before Inductor loads).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "compile-cache" / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(work / "compile-cache" / "triton"))
    t_model = time.perf_counter()
    model = write_random_model(work / f"{arch}-random", arch, device)
    on_cuda = device.startswith("cuda")
    result: dict[str, Any] = {"model_write_s": round(time.perf_counter() - t_model, 1), "servers": [],
                              "rows": [], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for n in pairs:
        port = free_port()
        fdt = feature_dtype_big if n > 100_000 else "float16"
        env = {
            "RAGTURBO_MODEL_DIR": str(model), "RAGTURBO_BACKEND": "fast", "RAGTURBO_DEVICE": device,
            "RAGTURBO_DTYPE": "float16" if on_cuda else "float32", "RAGTURBO_MAX_BATCH": str(max_batch),
            "RAGTURBO_MAX_WAIT_MS": str(max_wait_ms), "RAGTURBO_BATCH_BUCKETS": buckets,
            "RAGTURBO_MAX_QUEUE": str(4 * max(clients)), "RAGTURBO_REQUEST_TIMEOUT_S": "120",
            "RAGTURBO_SYNTHETIC_PAIRS": str(n), "RAGTURBO_FEATURE_DTYPE": fdt,
            "RAGTURBO_MIN_SCORE": "0",  # random pairs score low: keep every neighbour used
            "RAGTURBO_COMPILE_CACHE_DIR": str(work / "compile-cache"),
            "RAGTURBO_DB_PATH": str(work / "db"), "RAGTURBO_LOG_LEVEL": "INFO",
        }
        log_path = work / f"server-{n}.log"
        proc, start_s = start_server(env, port, startup_timeout_s, log_path)
        base = f"http://127.0.0.1:{port}"
        srv = {"pairs": n, "feature_dtype": fdt, "ready_s": round(start_s, 1),
               "cache": "cold" if not result["servers"] else "warm"}
        result["servers"].append(srv)
        typer.echo(f"server N={n} ({fdt}) ready in {start_s:.1f} s ({srv['cache']} compile cache)", err=True)
        try:
            for c in (clients if not result["rows"] or not clients_after_first else clients_after_first):
                _load(f"{base}/generate", c, min(2.0, seconds / 3), fmt, k)  # warm
                m0 = read_histograms(base)
                t0 = time.perf_counter()
                lat, errors = _load(f"{base}/generate", c, seconds, fmt, k)
                wall = time.perf_counter() - t0
                m1 = read_histograms(base)

                def ms(key: str, m0: dict = m0, m1: dict = m1) -> float | None:
                    v = mean_between(m0, m1, key, 1e3)
                    return None if v is None else round(v, 2)

                stages = {st: ms(f'ragturbo_stage_duration_seconds{{stage="{st}"}}') for st in STAGES}
                mean_batch = mean_between(m0, m1, "ragturbo_batch_size")
                row = {"pairs": n, "clients": c, "p50_ms": round(pct(lat, 0.5) * 1e3, 2),
                       "p99_ms": round(pct(lat, 0.99) * 1e3, 2), "images_per_s": round(len(lat) / wall, 1),
                       "mean_batch": None if mean_batch is None else round(mean_batch, 2), "errors": errors,
                       "queue_ms": ms("ragturbo_queue_wait_seconds"), "stages_ms": stages}
                result["rows"].append(row)
                typer.echo(json.dumps(row), err=True)
        finally:
            stop_server(proc)
        (work / "bench-service.json").write_text(json.dumps(result, indent=2))
    if inprocess_batches:
        from bench.pipeline import BenchOptions, run_pipeline_bench

        opts = BenchOptions(arch=arch, batches=tuple(inprocess_batches), device=device,
                            variants=inprocess_variants,
                            dtype="fp16", k=k, store_entries=max(pairs), parity_batches=(1,),
                            feature_dtype=feature_dtype_big if max(pairs) > 100_000 else "float16",
                            time_budget_s=inprocess_budget_s)

        def save(r: dict[str, Any]) -> None:
            result["inprocess"] = r
            (work / "bench-service.json").write_text(json.dumps(result, indent=2, default=str))

        save(run_pipeline_bench(opts, checkpoint=save))
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [f"date {result['date']}; servers: " + "; ".join(
        f"N={s['pairs']} ({s['feature_dtype']} features) ready in {s['ready_s']} s, {s['cache']} cache"
        for s in result["servers"])]
    head = ("| pairs | clients | p50 ms | p99 ms | images/s | mean batch | queue ms | "
            "text | retrieval | unet | vae | encode | errors |")
    lines += ["", head, "|---" * 13 + "|"]
    for r in result["rows"]:
        s = r["stages_ms"]
        lines.append(
            f"| {r['pairs']} | {r['clients']} | {r['p50_ms']} | {r['p99_ms']} | {r['images_per_s']} | "
            f"{r['mean_batch']} | {r['queue_ms']} | {s['text']} | {s['retrieval']} | {s['unet']} | "
            f"{s['vae']} | {s['encode']} | {r['errors']} |"
        )
    if result.get("inprocess"):
        from bench.report import format_table

        lines += ["", "in-process, same run:", format_table(result["inprocess"])]
    return "\n".join(lines)
