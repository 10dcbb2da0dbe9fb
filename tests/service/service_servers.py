"""Loopback test servers: the service in a subprocess (tests/service/service_server_main.py)
with real settings from RAGTURBO_*; and a reader for Prometheus text."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A service process on 127.0.0.1; ``url``; logs in ``log_path``."""

    def __init__(
        self, env: dict[str, str], engine: str, tmp: Path, batch_s: float = 0.0, noise_res: int = 0
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        full_env = {
            **os.environ,
            "RAGTURBO_HOST": "127.0.0.1",
            "RAGTURBO_PORT": str(self.port),
            "RAGTURBO_DEVICE": "cpu",
            "RAGTURBO_DB_PATH": str(tmp / "db"),
            "OMP_NUM_THREADS": "1",
            **env,
        }
        self._log = open(self.log_path, "wb")  # noqa: SIM115 — open for the process lifetime
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "service_server_main.py"),
                "--engine",
                engine,
                "--batch-s",
                str(batch_s),
                "--noise-res",
                str(noise_res),
            ],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(tmp),
        )

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout_s}s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        if key == name and not want:
            return float(value)
        if key.startswith(name + "{"):
            got = ",".join(sorted(key[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return 0.0
