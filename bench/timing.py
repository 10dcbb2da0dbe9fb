"""Timing helpers: CUDA events on the GPU, ``perf_counter`` on the CPU.

``Marker`` records named points inside one iteration (an event per point on CUDA, no
host sync); ``time_iterations`` warms up, runs an iteration until both a minimum count
and a minimum wall time are reached, and returns per-segment milliseconds for every
iteration. Medians are taken by the caller.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


class Marker:
    """Named time points within one iteration on one device."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.points: list[object] = []

    def mark(self, name: str) -> None:
        self.names.append(name)
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.points.append(ev)
        else:
            self.points.append(time.perf_counter())

    def segments(self) -> dict[str, float]:
        """ms between consecutive marks, keyed by the later mark's name, plus "total"."""
        if len(self.points) < 2:
            raise ValueError(f"need at least two marks, got {self.names}")
        if self.cuda:
            self.points[-1].synchronize()  # type: ignore[attr-defined]

            def dt(a: object, b: object) -> float:
                return float(a.elapsed_time(b))  # type: ignore[attr-defined]

        else:

            def dt(a: object, b: object) -> float:
                return (float(b) - float(a)) * 1e3  # type: ignore[arg-type]

        out: dict[str, float] = {}
        for i in range(1, len(self.points)):
            name = self.names[i]
            out[name] = out.get(name, 0.0) + dt(self.points[i - 1], self.points[i])
        out["total"] = dt(self.points[0], self.points[-1])
        return out


@dataclass
class TimingPolicy:
    warmup: int = 3
    min_iters: int = 10
    max_iters: int = 200
    min_time_s: float = 1.0


def time_iterations(
    iteration: Callable[[Marker], None], device: torch.device, policy: TimingPolicy
) -> list[dict[str, float]]:
    """Run ``iteration(marker)`` (it must call ``marker.mark("start")`` first and then one
    mark per stage) and return the per-iteration segment dicts after warm-up."""
    for _ in range(policy.warmup):
        iteration(Marker(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    runs: list[dict[str, float]] = []
    t0 = time.perf_counter()
    while len(runs) < policy.max_iters and (
        len(runs) < policy.min_iters or time.perf_counter() - t0 < policy.min_time_s
    ):
        m = Marker(device)
        iteration(m)
        runs.append(m.segments())
    return runs


def time_callable(fn: Callable[[], object], device: torch.device, policy: TimingPolicy) -> list[float]:
    """Median-ready list of ms for a zero-argument callable (e.g. a graph replay)."""

    def it(m: Marker) -> None:
        m.mark("start")
        fn()
        m.mark("run")

    return [r["run"] for r in time_iterations(it, device, policy)]


def median_segments(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over iterations."""
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}
