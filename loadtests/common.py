"""Shared pieces of the locust scenarios: the request, a per-request recorder,
threshold checks that fail the run, and the server RSS sampler.

Each scenario file (steady.py, overload.py, soak.py, burst.py) imports this
module, declares a `SCENARIO` name and calls `install(SCENARIO)`. Thresholds
come from loadtests/thresholds.yaml (profile `local` by default, `cluster`
with LOAD_PROFILE=cluster). At the end of a run the verdict is written as JSON
to $LOAD_RESULT (if set) and locust exits 1 when any threshold is broken.

Environment:
  LOAD_PROFILE   local | cluster (thresholds.yaml profile), default local
  LOAD_RESULT    path of the JSON verdict
  LOAD_API_KEY   sent as `Authorization: Bearer ...` when set
  LOAD_MAX_REQUESTS  hard cap on requests of one run (default from thresholds)
  LOAD_SERVER_PID    pid of a local server: RSS read from /proc when /metrics lacks it
  LOAD_OVERRIDES     JSON object merged over the scenario's thresholds (e.g. '{"duration_s": 20}')
  LOAD_SCALE     multiplies the user counts (cluster sizing)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("ragturbo.load")

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "a red circle on a blue background",
    "two green squares in the top left",
    "a small yellow triangle above a large purple circle",
    "three orange stars on a white background",
    "a blue square to the right of a red triangle",
    "a large cyan circle in the center",
]
RSS_SOURCE: dict[str, str] = {}  # where the last RSS sample came from
RSS_RE = re.compile(r"^process_resident_memory_bytes(?:\{[^}]*\})?\s+([0-9.eE+]+)\s*$", re.MULTILINE)


def thresholds(scenario: str, profile: str | None = None) -> dict[str, Any]:
    """Bounds of `scenario` in `profile` (thresholds.yaml), defaults merged in."""
    data = yaml.safe_load((HERE / "thresholds.yaml").read_text())
    profile = profile or os.environ.get("LOAD_PROFILE", "local")
    if profile not in data:
        raise ValueError(f"LOAD_PROFILE={profile!r} not in thresholds.yaml ({sorted(data)})")
    prof = data[profile]
    if scenario not in prof:
        raise ValueError(f"scenario {scenario!r} has no thresholds in profile {profile!r}")
    over = json.loads(os.environ.get("LOAD_OVERRIDES", "{}"))
    return {**prof.get("defaults", {}), **prof[scenario], **over}


def payload(rng: random.Random) -> dict[str, Any]:
    """One /generate body: a toy-world prompt, a seed, retrieval on."""
    return {"prompt": rng.choice(PROMPTS), "seed": rng.randrange(2**32),
            "retrieval": {"mode": "adapter", "k": 1}, "format": "png"}


def headers() -> dict[str, str]:
    key = os.environ.get("LOAD_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass
class Recorder:
    """Every /generate outcome: (t since start [s], status, latency [ms], Retry-After present)."""

    t0: float = field(default_factory=time.monotonic)
    events: list[tuple[float, int, float, bool]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t [s], RSS [bytes])

    def add(self, status: int, latency_ms: float, retry_after: bool) -> None:
        self.events.append((time.monotonic() - self.t0, status, latency_ms, retry_after))


REC = Recorder()


def read_rss(base_url: str) -> float | None:
    """Server RSS in bytes: /metrics process_resident_memory_bytes, else /proc of LOAD_SERVER_PID."""
    try:
        req = urllib.request.Request(base_url.rstrip("/") + "/metrics", headers=headers())
        with urllib.request.urlopen(req, timeout=5) as r:
            m = RSS_RE.search(r.read().decode())
        if m:
            RSS_SOURCE["last"] = "metrics"
            return float(m.group(1))
    except OSError as e:
        log.debug("metrics read failed: %s", e)
    pid = os.environ.get("LOAD_SERVER_PID")
    if pid:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    RSS_SOURCE["last"] = f"/proc/{pid}/status"
                    return float(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]  # nearest rank


def summarize(rec: Recorder, t_end: float | None = None) -> dict[str, Any]:
    """Counts and latency percentiles of a run (latencies of 200s only)."""
    ev = rec.events
    ok = [lat for _, s, lat, _ in ev if s == 200]
    n = len(ev)
    s429 = [e for e in ev if e[1] == 429]
    out = {
        "requests": n,
        "ok": len(ok),
        "rejected_429": len(s429),
        "r429_without_retry_after": sum(1 for e in s429 if not e[3]),
        "http_5xx": sum(1 for e in ev if 500 <= e[1] < 600),
        "other_errors": sum(1 for e in ev if e[1] not in (200, 429) and not 500 <= e[1] < 600),
        "duration_s": round(t_end if t_end is not None else (ev[-1][0] if ev else 0.0), 1),
        "p50_ms": _pct(ok, 0.50), "p90_ms": _pct(ok, 0.90), "p99_ms": _pct(ok, 0.99),
        "max_ms": max(ok) if ok else None,
    }
    out["ok_rps"] = round(len(ok) / out["duration_s"], 2) if out["duration_s"] else 0.0
    out["error_rate"] = round((out["http_5xx"] + out["other_errors"]) / n, 4) if n else 0.0
    out["rate_429"] = round(len(s429) / n, 4) if n else 0.0
    return out


def check(summary: dict[str, Any], bounds: dict[str, Any], rec: Recorder) -> list[str]:
    """Broken thresholds as messages (empty when the run passes)."""
    fails: list[str] = []

    def bound(key: str, value: float | None, limit: float | None, op: str) -> None:
        if limit is None:
            return
        if value is None:
            fails.append(f"{key}: no data (bound {op} {limit})")
        elif (op == "<=" and value > limit) or (op == ">=" and value < limit):
            fails.append(f"{key}={value} breaks bound {op} {limit}")

    bound("requests", summary["requests"], bounds.get("min_requests"), ">=")
    bound("p99_ms", summary["p99_ms"], bounds.get("p99_ms"), "<=")
    bound("error_rate", summary["error_rate"], bounds.get("max_error_rate"), "<=")
    bound("http_5xx", summary["http_5xx"], bounds.get("max_5xx"), "<=")
    bound("rate_429", summary["rate_429"], bounds.get("max_rate_429"), "<=")
    bound("rate_429", summary["rate_429"], bounds.get("min_rate_429"), ">=")
    bound("r429_without_retry_after", summary["r429_without_retry_after"],
          bounds.get("max_429_without_retry_after"), "<=")
    bound("ok_rps", summary["ok_rps"], bounds.get("min_ok_rps"), ">=")
    if "recovery_window_s" in bounds and rec.events:
        # after a burst: the last window must be served again without rejections
        t_end = rec.events[-1][0]
        tail = [e for e in rec.events if e[0] >= t_end - bounds["recovery_window_s"]]
        rej = sum(1 for e in tail if e[1] != 200)
        summary["tail_non200"] = rej
        summary["tail_requests"] = len(tail)
        bound("tail_non200", rej, bounds.get("max_tail_non200", 0), "<=")
    if "max_rss_growth_mb" in bounds:
        warm = bounds.get("rss_warmup_fraction", 0.25)
        if len(rec.rss) >= 3:
            t_last = rec.rss[-1][0]
            after = [r for t, r in rec.rss if t >= warm * t_last]
            base = after[0]
            end = sorted(r for _, r in rec.rss[-3:])[1]  # median of the last three samples
            growth = (end - base) / 2**20
            summary["rss_start_mb"] = round(base / 2**20, 1)
            summary["rss_end_mb"] = round(end / 2**20, 1)
            summary["rss_growth_mb"] = round(growth, 1)
            summary["rss_samples"] = len(rec.rss)
            summary["rss_source"] = RSS_SOURCE.get("last", "?")
            bound("rss_growth_mb", round(growth, 1), bounds["max_rss_growth_mb"], "<=")
        else:
            fails.append(f"rss: only {len(rec.rss)} samples (need >= 3); is /metrics "
                         "exporting process_resident_memory_bytes or LOAD_SERVER_PID set?")
    return fails


def install(scenario: str) -> dict[str, Any]:
    """Hook the recorder, the request cap, the RSS sampler and the verdict into locust."""
    from locust import events

    bounds = thresholds(scenario)
    cap = int(os.environ.get("LOAD_MAX_REQUESTS", bounds.get("max_requests", 20000)))

    @events.request.add_listener
    def _on_request(request_type: str, name: str, response_time: float, response: Any = None,
                    exception: Any = None, context: Any = None, **_: Any) -> None:
        if name != "/generate":
            return
        status = getattr(response, "status_code", 0) or 0
        hdrs = getattr(response, "headers", None) or {}
        REC.add(int(status), float(response_time), bool(hdrs.get("Retry-After")))

    @events.test_start.add_listener
    def _on_start(environment: Any, **_: Any) -> None:
        REC.t0 = time.monotonic()
        REC.events.clear()
        REC.rss.clear()
        if "max_rss_growth_mb" in bounds:
            import gevent

            def sample() -> None:
                every = float(bounds.get("rss_sample_s", 5))
                while True:
                    rss = read_rss(environment.host)
                    if rss is not None:
                        REC.rss.append((time.monotonic() - REC.t0, rss))
                    gevent.sleep(every)

            gevent.spawn(sample)

        import gevent

        def cap_guard() -> None:
            while True:
                if len(REC.events) >= cap and environment.runner is not None:
                    log.warning("request cap %d reached: stopping", cap)
                    environment.runner.quit()
                    return
                gevent.sleep(0.5)

        gevent.spawn(cap_guard)

    @events.quitting.add_listener
    def _on_quit(environment: Any, **_: Any) -> None:
        rss = read_rss(environment.host) if "max_rss_growth_mb" in bounds else None
        if rss is not None:
            REC.rss.append((time.monotonic() - REC.t0, rss))
        summary = summarize(REC, time.monotonic() - REC.t0)
        fails = check(summary, bounds, REC)
        verdict = {"scenario": scenario, "profile": os.environ.get("LOAD_PROFILE", "local"),
                   "passed": not fails, "failures": fails, "thresholds": bounds, **summary}
        log.info("verdict %s", json.dumps(verdict))
        if path := os.environ.get("LOAD_RESULT"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(verdict, indent=2) + "\n")
        environment.process_exit_code = 0 if not fails else 1

    return bounds


class GenerateMixin:
    """The task every scenario runs: POST /generate, 200 and 429 are both 'expected'."""

    rng = random.Random(0)
    RETRY_CAP_S = 0.5

    def post_generate(self) -> None:
        body = payload(self.rng)
        with self.client.post("/generate", json=body, headers=headers(), name="/generate",
                              catch_response=True) as resp:  # type: ignore[attr-defined]
            if resp.status_code == 200:
                resp.success()
            elif resp.status_code == 429:
                # admission control working as designed; counted separately
                retry = resp.headers.get("Retry-After")
                if retry:
                    resp.success()
                else:
                    resp.failure("429 without Retry-After")
                # a well-behaved client backs off (capped so overload stays overload)
                try:
                    pause = float(retry) if retry else self.RETRY_CAP_S
                except ValueError:
                    pause = self.RETRY_CAP_S
                time.sleep(min(pause, self.RETRY_CAP_S))  # gevent-patched: yields
            else:
                resp.failure(f"HTTP {resp.status_code}: {str(resp.text)[:200]}")
