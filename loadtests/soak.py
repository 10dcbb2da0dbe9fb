"""Soak at moderate load: latency stays bounded and the server's resident memory
does not grow after warm-up (samples process_resident_memory_bytes from /metrics)."""

from __future__ import annotations

import os

from common import GenerateMixin, install
from locust import FastHttpUser, LoadTestShape, constant_throughput, task

SCENARIO = "soak"
BOUNDS = install(SCENARIO)


class SoakUser(GenerateMixin, FastHttpUser):
    wait_time = constant_throughput(float(BOUNDS["rps_per_user"]))

    @task
    def generate(self) -> None:
        self.post_generate()


class SoakShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        if self.get_run_time() > float(BOUNDS["duration_s"]):
            return None
        users = max(1, round(int(BOUNDS["users"]) * float(os.environ.get("LOAD_SCALE", "1"))))
        return users, users
