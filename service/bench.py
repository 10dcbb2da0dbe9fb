"""``ragturbo bench service``: a short closed-loop load test over loopback.

Starts ``ragturbo serve`` in a subprocess per configuration (batching on: max_batch B;
off: max_batch 1), then runs C concurrent clients, each sending /generate requests back
to back for ``--seconds``. Reports p50/p99 latency and images/s per (batching, C) and
the mean batch size read from the server's /metrics. Prints a markdown table.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str], port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """``ragturbo serve`` on 127.0.0.1:port; returns once /readyz is 200."""
    import httpx

    cmd = [
        sys.executable,
        "-m",
        "ragturbo.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during startup")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout_s}s")


def _metric_sum_count(text: str, name: str) -> tuple[float, float]:
    s = c = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            s = float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            c = float(line.split()[-1])
    return s, c


async def _load(
    url: str,
    clients: int,
    seconds: float,
    body: Callable[[int, int], dict[str, Any]] | None = None,
    ok: Callable[[Any], bool] | None = None,
) -> tuple[list[float], int, int]:
    """Closed-loop clients for ``seconds``: latencies of the answers ``ok`` accepts (default:
    status 200), their count, and the rest. ``body(client, n)`` makes each request."""
    import httpx

    make = body or (lambda i, n: {"prompt": f"a red circle {i}", "seed": n})
    good = ok or (lambda r: r.status_code == 200)
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal errors
            n = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await client.post(url, json=make(i, n))
                if good(r):
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                n += 1

        await asyncio.gather(*(one(i) for i in range(clients)))
    return lat, len(lat), errors


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


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
        from service.bench_cuda import bench_service_cuda, format_report

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

    import httpx

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
        port = _free_port()
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
        proc = start_server(env, port)
        base = f"http://127.0.0.1:{port}"
        try:
            for c in counts:
                asyncio.run(_load(f"{base}/generate", c, min(2.0, seconds / 4)))  # warm
                m0 = _metric_sum_count(httpx.get(f"{base}/metrics").text, "ragturbo_batch_size")
                t0 = time.perf_counter()
                lat, ok, errors = asyncio.run(_load(f"{base}/generate", c, seconds))
                wall = time.perf_counter() - t0
                m1 = _metric_sum_count(httpx.get(f"{base}/metrics").text, "ragturbo_batch_size")
                mean_batch = (m1[0] - m0[0]) / max(1.0, m1[1] - m0[1])
                rows.append(
                    (
                        label,
                        mb,
                        c,
                        _pct(lat, 0.5) * 1000,
                        _pct(lat, 0.99) * 1000,
                        ok / wall,
                        mean_batch,
                        errors,
                    )
                )
                typer.echo(
                    f"batching {label} clients {c}: p50 {rows[-1][3]:.1f} ms "
                    f"p99 {rows[-1][4]:.1f} ms {rows[-1][5]:.1f} img/s "
                    f"mean batch {mean_batch:.2f} errors {errors}",
                    err=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
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
