"""Burst: a quiet baseline, a sudden spike far past capacity, then quiet again.
During the spike the service may reject (429 + Retry-After) but never fail with
5xx; after it, the last `recovery_window_s` must be served without rejections."""

from __future__ import annotations

import os

from common import GenerateMixin, install
from locust import FastHttpUser, LoadTestShape, constant_throughput, task

SCENARIO = "burst"
BOUNDS = install(SCENARIO)


_paced = constant_throughput(float(BOUNDS["rps_per_user"]))


class BurstUser(GenerateMixin, FastHttpUser):
    def wait_time(self) -> float:
        # baseline users pace themselves; during the spike nobody waits
        runner = self.environment.runner
        scale = float(os.environ.get("LOAD_SCALE", "1"))
        if runner is not None and runner.user_count > max(1, round(int(BOUNDS["users"]) * scale)):
            return 0.0
        return _paced(self)

    @task
    def generate(self) -> None:
        self.post_generate()


class BurstShape(LoadTestShape):
    """baseline users until burst_at_s, burst users for burst_s, baseline to duration_s."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t > float(BOUNDS["duration_s"]):
            return None
        scale = float(os.environ.get("LOAD_SCALE", "1"))
        base = max(1, round(int(BOUNDS["users"]) * scale))
        peak = max(base, round(int(BOUNDS["burst_users"]) * scale))
        start = float(BOUNDS["burst_at_s"])
        if start <= t < start + float(BOUNDS["burst_s"]):
            return peak, peak  # all at once: that is the burst
        return base, peak
