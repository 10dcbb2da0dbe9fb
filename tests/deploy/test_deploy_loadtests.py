"""The load-test harness: thresholds fail the run when they should, the
scenarios only aim at loopback unless told otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"loadtests_{name}", ROOT / "loadtests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


common = _load("common")
run = _load("run")


def _rec(events: list[tuple[float, int, float, bool]]) -> Any:
    rec = common.Recorder()
    rec.events = list(events)
    return rec


def test_every_scenario_has_local_and_cluster_bounds() -> None:
    for profile in ("local", "cluster"):
        for name in run.SCENARIOS:
            b = common.thresholds(name, profile)
            assert b["max_5xx"] == 0
            assert "p99_ms" in b and "duration_s" in b and "max_requests" in b
    assert "max_rss_growth_mb" in common.thresholds("soak", "local")
    assert common.thresholds("overload", "local")["min_rate_429"] > 0


def test_clean_run_passes_and_5xx_fails() -> None:
    ok = [(i * 0.1, 200, 100.0, False) for i in range(100)]
    bounds = {"p99_ms": 500, "max_5xx": 0, "max_error_rate": 0.0, "min_requests": 50}
    rec = _rec(ok)
    assert common.check(common.summarize(rec), bounds, rec) == []
    rec = _rec(ok + [(11.0, 503, 5.0, False)])
    fails = common.check(common.summarize(rec), bounds, rec)
    assert any("http_5xx=1" in f for f in fails)


def test_p99_over_bound_fails() -> None:
    ev = [(i * 0.1, 200, 100.0, False) for i in range(95)] + \
         [(10 + i * 0.1, 200, 3000.0, False) for i in range(5)]
    rec = _rec(ev)
    s = common.summarize(rec)
    assert s["p50_ms"] == 100.0 and s["p99_ms"] == 3000.0
    assert any(f.startswith("p99_ms") for f in common.check(s, {"p99_ms": 1000}, rec))


def test_429_needs_retry_after_and_overload_needs_429s() -> None:
    ev = [(i * 0.1, 200, 50.0, False) for i in range(50)] + [(6.0, 429, 1.0, False)]
    rec = _rec(ev)
    bounds = {"max_429_without_retry_after": 0, "min_rate_429": 0.05}
    fails = common.check(common.summarize(rec), bounds, rec)
    assert any("r429_without_retry_after=1" in f for f in fails)
    assert any(f.startswith("rate_429") for f in fails)  # 1/51 < 5 %


def test_burst_recovery_window() -> None:
    ev = [(t * 0.5, 200, 50.0, False) for t in range(20)] + [(10.0 + i * 0.01, 429, 1.0, True) for i in range(30)]
    ev += [(12 + t * 0.5, 200, 50.0, False) for t in range(30)]
    rec = _rec(ev)
    assert common.check(common.summarize(rec), {"recovery_window_s": 10}, rec) == []
    late = ev + [(27.0, 429, 1.0, True)]
    rec = _rec(late)
    assert any("tail_non200" in f for f in common.check(common.summarize(rec), {"recovery_window_s": 10}, rec))


def test_rss_growth_bound() -> None:
    rec = _rec([(0.0, 200, 1.0, False)])
    mb = 2**20
    rec.rss = [(t, 500 * mb + (t * 2 * mb if t > 20 else 0)) for t in range(0, 101, 5)]
    s = common.summarize(rec)
    fails = common.check(s, {"max_rss_growth_mb": 64, "rss_warmup_fraction": 0.25}, rec)
    assert s["rss_growth_mb"] > 64 and any("rss_growth_mb" in f for f in fails)
    rec.rss = [(t, 500 * mb) for t in range(0, 101, 5)]
    assert common.check(common.summarize(rec), {"max_rss_growth_mb": 64}, rec) == []
    rec.rss = []
    assert any("samples" in f for f in common.check(common.summarize(rec), {"max_rss_growth_mb": 64}, rec))


def test_rss_is_read_from_metrics_text() -> None:
    text = "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 2.5e+08\n"
    assert float(common.RSS_RE.search(text).group(1)) == 2.5e8


def test_only_loopback_without_allow_remote() -> None:
    assert run.is_loopback("http://127.0.0.1:8000")
    assert run.is_loopback("http://localhost:8000")
    assert not run.is_loopback("http://10.1.2.3:8000")
    with pytest.raises(SystemExit):
        run.main(["--url", "http://10.1.2.3:8000", "--scenarios", "steady"])


class _Stub(BaseHTTPRequestHandler):
    """A tiny stand-in service: every 5th /generate answers 500."""

    protocol_version = "HTTP/1.1"
    n = 0

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200 if self.path in ("/readyz", "/metrics") else 404, b"ok")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).n += 1
        self._send(500 if self.n % 5 == 0 else 200, b"{}")


@pytest.fixture()
def stub_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_locust_run_fails_on_5xx(stub_url: str, tmp_path: Path) -> None:
    # never import locust here: it monkey-patches the test process with gevent
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is the `load` extra")
    env = {**os.environ, "LOAD_OVERRIDES": json.dumps({"duration_s": 4, "users": 2,
                                                       "rps_per_user": 5, "min_requests": 5})}
    res = subprocess.run([sys.executable, str(ROOT / "loadtests" / "run.py"), "--url", stub_url,
                          "--scenarios", "steady", "--out", "load-out"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    tmp_path = tmp_path / "load-out"  # relative --out resolves against the caller's cwd
    verdict = json.loads((tmp_path / "steady.json").read_text())
    assert verdict["passed"] is False
    assert verdict["http_5xx"] >= 1 and verdict["ok"] >= 5
    assert "FAIL" in (tmp_path / "summary.md").read_text()
