"""Ramp past capacity: admission must shed load with 429 + Retry-After, never 5xx,
and requests it admits must still finish within the latency bound."""

from __future__ import annotations

import os

from common import GenerateMixin, install
from locust import FastHttpUser, LoadTestShape, constant, task

SCENARIO = "overload"
BOUNDS = install(SCENARIO)


class OverloadUser(GenerateMixin, FastHttpUser):
    # closed loop without think time: concurrency == users
    wait_time = constant(0)

    @task
    def generate(self) -> None:
        self.post_generate()


class RampShape(LoadTestShape):
    """Linear ramp from 1 to `users` over `ramp_s`, then hold until `duration_s`."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t > float(BOUNDS["duration_s"]):
            return None
        peak = max(1, round(int(BOUNDS["users"]) * float(os.environ.get("LOAD_SCALE", "1"))))
        frac = min(1.0, t / float(BOUNDS["ramp_s"]))
        return max(1, round(peak * frac)), peak
