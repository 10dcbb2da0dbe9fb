"""Steady load below capacity: every request served, p99 bounded, no rejections.

    locust -f loadtests/steady.py --headless --host http://127.0.0.1:8000
(loadtests/run.py sets users, rate and duration from thresholds.yaml.)
"""

from __future__ import annotations

import os

from common import GenerateMixin, install
from locust import FastHttpUser, LoadTestShape, constant_throughput, task

SCENARIO = "steady"
BOUNDS = install(SCENARIO)


class SteadyUser(GenerateMixin, FastHttpUser):
    # each user paces itself to `rps_per_user`; users * rps_per_user < capacity
    wait_time = constant_throughput(float(BOUNDS["rps_per_user"]))

    @task
    def generate(self) -> None:
        self.post_generate()


class SteadyShape(LoadTestShape):
    """Fixed user count for `duration_s` (the spawn is instant)."""

    def tick(self) -> tuple[int, float] | None:
        scale = float(os.environ.get("LOAD_SCALE", "1"))
        if self.get_run_time() > float(BOUNDS["duration_s"]):
            return None
        users = max(1, round(int(BOUNDS["users"]) * scale))
        return users, users
