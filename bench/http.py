"""What the HTTP benchmarks share: start ``ragturbo serve``, read its /metrics, load it.

One server starter (``start_server``), one /metrics reader (``read_histograms``) and one
closed-loop load (``closed_loop``) serve ``ragturbo bench service`` on CPU and on CUDA.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Histograms = dict[str, tuple[float, float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], port: int, timeout_s: float = 120.0, log_path: Path | None = None
) -> tuple[subprocess.Popen, float]:
    """``ragturbo serve`` on 127.0.0.1:port with ``env`` over os.environ; returns the process
    and the seconds to the first /readyz 200. Its output goes to ``log_path`` (else nowhere)."""
    import httpx

    cmd = [sys.executable, "-m", "ragturbo.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    if log_path is None:
        out: Any = subprocess.DEVNULL
        where = ""
    else:
        out = open(log_path, "ab")  # noqa: SIM115 - the child keeps it; closed below
        where = f" (log {log_path})"
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log_path is not None:
            out.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during startup{where}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s{where}")


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM (the server drains), then SIGKILL: a stuck server must not hold the device."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def read_histograms(base: str) -> Histograms:
    """{name or name{label="v",...}: (sum, count)} of every histogram on ``base``/metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: Histograms = {}
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        for s in fam.samples:
            part = s.name[len(fam.name):]
            if part not in ("_sum", "_count"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            key = f"{fam.name}{{{labels}}}" if labels else fam.name
            total, count = out.get(key, (0.0, 0.0))
            out[key] = (s.value, count) if part == "_sum" else (total, s.value)
    return out


def mean_between(m0: Histograms, m1: Histograms, key: str, scale: float = 1.0) -> float | None:
    """Mean of histogram ``key`` over the observations made between two reads (None if none)."""
    a, b = m0.get(key, (0.0, 0.0)), m1.get(key, (0.0, 0.0))
    n = b[1] - a[1]
    return scale * (b[0] - a[0]) / n if n else None


async def _closed_loop(
    url: str, clients: int, seconds: float,
    body: Callable[[int, int], dict[str, Any]], ok: Callable[[Any], bool],
) -> tuple[list[float], int]:
    import httpx

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
                r = await client.post(url, json=body(i, n))
                if ok(r):
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                n += 1

        await asyncio.gather(*(one(i) for i in range(clients)))
    return lat, errors


def closed_loop(
    url: str,
    clients: int,
    seconds: float,
    body: Callable[[int, int], dict[str, Any]] | None = None,
    ok: Callable[[Any], bool] | None = None,
) -> tuple[list[float], int]:
    """``clients`` clients each POSTing back to back for ``seconds``: the latencies (s) of the
    answers ``ok`` accepts (default: status 200) and the count of the rest. ``body(client, n)``
    makes each request (default: a distinct prompt per client, seed n)."""
    make = body or (lambda i, n: {"prompt": f"a red circle {i}", "seed": n})
    good = ok or (lambda r: r.status_code == 200)
    return asyncio.run(_closed_loop(url, clients, seconds, make, good))


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank); NaN when empty."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")
