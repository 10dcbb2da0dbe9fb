"""``ragturbo bench service``: a short closed-loop load test over loopback.

Starts ``ragturbo serve`` in a subprocess per configuration (batching on: max_batch B;
off: max_batch 1), then runs C concurrent clients, each sending /generate requests back
to back for ``--seconds``. Reports p50/p99 latency and images/s per (batching, C) and
the mean batch size read from the server's /metrics. Prints a markdown table.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Annotated

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


def bench_service(
    clients: str = typer.Option("1,8,32", help="Comma-separated concurrent client counts."),
    max_batch: int = typer.Option(16, help="RAGTURBO_MAX_BATCH with batching on."),
    max_wait_ms: float = typer.Option(5.0, help="RAGTURBO_MAX_WAIT_MS with batching on."),
    seconds: float = typer.Option(8.0, help="Measured seconds per row."),
    threads: Annotated[
        int, typer.Option(help="OMP_NUM_THREADS of the server (0: torch's default).")
    ] = 0,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model dir (default: a tiny random one).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu: tiny model, batching on/off. cuda: SD-Turbo-sized random "
                          "model, backend fast, synthetic pairs (--pairs), in-process rows beside.")
    ] = "cpu",
    pairs: Annotated[str, typer.Option(help="cuda: stored pairs per server, comma list.")] = "10000,630000",
    out: Annotated[Path, typer.Option(help="cuda: work dir (model, compile cache, JSON, logs).")] = Path("out/bench-service"),
    fmt: Annotated[str, typer.Option("--format", help="cuda: image format asked for.")] = "jpeg",
    k: Annotated[int, typer.Option(help="cuda: neighbours per request.")] = 1,
    buckets: Annotated[str, typer.Option(help="cuda: RAGTURBO_BATCH_BUCKETS.")] = "1,2,4,8,16",
    feature_dtype_big: Annotated[str, typer.Option(help="cuda: feature dtype above 100K pairs.")] = "float8",
    inprocess_batch: Annotated[str, typer.Option(help="cuda: in-process bench batches ('' skips).")] = "1,4,8,16",
    inprocess_budget_s: Annotated[float, typer.Option(help="cuda: in-process time budget.")] = 240.0,
    startup_timeout_s: Annotated[float, typer.Option(help="cuda: longest wait for /readyz.")] = 420.0,
    inprocess_variants: Annotated[str, typer.Option(help="cuda: in-process variants.")] = "eager,peer,fast",
    clients_later: Annotated[str, typer.Option(help="cuda: client counts for the 2nd+ server ('' = same).")] = "",
) -> None:
    """p50/p99 latency and images/s at several concurrencies (cpu: batching on and off;
    cuda: the fast backend with N stored pairs, beside the in-process bench of the same run)."""
    if device.startswith("cuda"):
        from bench.service_cuda import bench_service_cuda, format_report

        ints = lambda v: [int(x) for x in v.split(",") if x.strip()]
        res = bench_service_cuda(
            ints(clients), ints(pairs), seconds, out, fmt, k, max_batch, max_wait_ms, buckets,
            feature_dtype_big, ints(inprocess_batch), inprocess_budget_s, startup_timeout_s,
            inprocess_variants=tuple(v for v in inprocess_variants.split(",") if v),
            clients_after_first=ints(clients_later) or None,
        )
        typer.echo(format_report(res))
        return
    import logging
    import tempfile

    logging.getLogger("httpx").setLevel(logging.WARNING)

    counts = [int(c) for c in clients.split(",") if c.strip()]
    load_start = os.getloadavg()[0]
    tmp = tempfile.TemporaryDirectory(prefix="ragturbo-bench-")
    if model_dir is None:
        from engines.random_models import write_model_dir

        model_dir = Path(tmp.name) / "tiny"
        write_model_dir(model_dir, "tiny", seed=0)
    rows = []
    for label, mb in (("on", max_batch), ("off", 1)):
        port = free_port()
        env = {
            "RAGTURBO_MODEL_DIR": str(model_dir),
            "RAGTURBO_DB_PATH": str(Path(tmp.name) / "db"),
            "RAGTURBO_MAX_BATCH": str(mb),
            "RAGTURBO_MAX_WAIT_MS": str(max_wait_ms),
            "RAGTURBO_MAX_QUEUE": str(max(64, 2 * max(counts))),
            "RAGTURBO_DEVICE": "cpu",
            "RAGTURBO_LOG_LEVEL": "WARNING",
        }
        if threads > 0:
            env["OMP_NUM_THREADS"] = str(threads)
        proc, _ = start_server(env, port)
        base = f"http://127.0.0.1:{port}"
        try:
            for c in counts:
                closed_loop(f"{base}/generate", c, min(2.0, seconds / 4))  # warm
                m0 = read_histograms(base)
                t0 = time.perf_counter()
                lat, errors = closed_loop(f"{base}/generate", c, seconds)
                wall = time.perf_counter() - t0
                mean_batch = mean_between(m0, read_histograms(base), "ragturbo_batch_size") or 0.0
                rows.append(
                    (label, mb, c, pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000, len(lat) / wall,
                     mean_batch, errors)
                )
                typer.echo(
                    f"batching {label} clients {c}: p50 {rows[-1][3]:.1f} ms "
                    f"p99 {rows[-1][4]:.1f} ms {rows[-1][5]:.1f} img/s "
                    f"mean batch {mean_batch:.2f} errors {errors}",
                    err=True,
                )
        finally:
            stop_server(proc, 30)
    typer.echo(
        f"\nmachine: {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}; "
        f"date {time.strftime('%Y-%m-%d')}; model {model_dir}; max_wait_ms {max_wait_ms}; "
        f"{seconds:g} s per row; server threads {threads or 'default'}; "
        f"1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end\n"
    )
    typer.echo(
        "| batching | max_batch | clients | p50 ms | p99 ms | images/s | mean batch | errors |"
    )
    typer.echo("|---|---|---|---|---|---|---|---|")
    for r in rows:
        typer.echo(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | "
            f"{r[6]:.2f} | {r[7]} |"
        )
    tmp.cleanup()
