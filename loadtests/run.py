"""Run the load scenarios headless and write a summary (what `make load` runs).

Without --url it starts `ragturbo serve` on 127.0.0.1 (a free port) with the
embedded default and a small queue so that overload is reachable, waits for
/readyz, runs every scenario, stops the server (SIGTERM, then SIGKILL), and
exits 1 if any scenario broke a threshold. With --url (make load
LOAD_URL=...) it runs the same scenarios against that service; targets other
than loopback need --allow-remote (only aim it at a deployment you operate).

Outputs under --out: <scenario>.json (verdict), <scenario>.log (locust),
server.log, summary.md (the table docs/deploy.md quotes).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

log = logging.getLogger("ragturbo.load")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = ("steady", "overload", "soak", "burst")
# The local server: small batches and a short queue so that 32 closed-loop
# users overflow it on 2 CPU cores; a drain timeout short enough for quick stops.
LOCAL_SERVER_ENV = {
    "RAGTURBO_MAX_BATCH": "4",
    "RAGTURBO_MAX_WAIT_MS": "10",
    "RAGTURBO_MAX_QUEUE": "8",
    "RAGTURBO_REQUEST_TIMEOUT_S": "30",
    "RAGTURBO_DRAIN_TIMEOUT_S": "5",
    "RAGTURBO_DEVICE": "cpu",
    "RAGTURBO_BACKEND": "torch",
}


def is_loopback(url: str) -> bool:
    """True when every address `url`'s host resolves to is in 127.0.0.0/8 or ::1."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {host!r} from {url!r}: {e}") from e
    return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll /readyz until 200; return seconds waited. Raises on timeout or server exit."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url}/readyz not 200 after {timeout_s:.0f} s")


def start_server(out: Path, port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "ragturbo"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} missing: run `make setup` first")
    env = {**os.environ, **LOCAL_SERVER_ENV}
    logf = (out / "server.log").open("wb")
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log.info("starting %s (%s)", " ".join(cmd),
             " ".join(f"{k}={v}" for k, v in LOCAL_SERVER_ENV.items()))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_server(proc: subprocess.Popen[bytes], grace_s: float = 20) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("server ignored SIGTERM for %.0f s: killing", grace_s)
            proc.kill()
            proc.wait(10)
    return proc.returncode


def run_scenario(name: str, url: str, out: Path, profile: str, pid: int | None) -> dict[str, Any]:
    bounds = {**yaml.safe_load((HERE / "thresholds.yaml").read_text())[profile][name],
              **json.loads(os.environ.get("LOAD_OVERRIDES", "{}"))}
    result = out / f"{name}.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "LOAD_RESULT": str(result), "LOAD_PROFILE": profile}
    if pid is not None:
        env["LOAD_SERVER_PID"] = str(pid)
    locust = Path(sys.executable).parent / "locust"
    cmd = [str(locust), "-f", str(HERE / f"{name}.py"), "--headless", "--host", url,
           "--only-summary", "--stop-timeout", "15", "--loglevel", "INFO"]
    # hard wall clock: the shape ends the run at duration_s; this is the backstop
    limit = float(bounds["duration_s"]) + 90
    log.info("scenario %s: %s", name, " ".join(cmd[1:]))
    with (out / f"{name}.log").open("wb") as logf:
        try:
            rc = subprocess.run(cmd, cwd=HERE, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if not result.exists():
        return {"scenario": name, "passed": False, "failures": [f"no verdict (locust rc={rc})"]}
    verdict = json.loads(result.read_text())
    verdict["locust_rc"] = rc
    return verdict


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0f}" if v >= 100 else f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


def summary_table(verdicts: list[dict[str, Any]]) -> str:
    cols = ["scenario", "passed", "requests", "ok_rps", "p50_ms", "p99_ms", "max_ms",
            "rate_429", "http_5xx", "error_rate", "rss_growth_mb"]
    lines = ["| " + " | ".join(cols) + " | bounds |", "|" + "---|" * (len(cols) + 1)]
    for v in verdicts:
        b = v.get("thresholds", {})
        keys = ("p99_ms", "max_error_rate", "max_5xx", "min_rate_429", "max_rate_429",
                "max_rss_growth_mb", "max_tail_non200")
        bounds = ", ".join(f"{k}={b[k]}" for k in keys if k in b)
        row = [fmt(v.get(c)) if c != "passed" else ("PASS" if v.get("passed") else "FAIL")
               for c in cols]
        lines.append("| " + " | ".join(row) + f" | {bounds} |")
    return "\n".join(lines) + "\n"


def _run(
    url: Annotated[str | None, typer.Option(help="service to load (default: start a local server)")] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", envvar="LOAD_ALLOW_REMOTE",
        help="allow a non-loopback --url (a deployment you operate); env LOAD_ALLOW_REMOTE=1")] = False,
    profile: Annotated[str | None, typer.Option(
        help="thresholds.yaml profile (default: local for loopback, cluster otherwise)")] = None,
    scenarios: Annotated[str, typer.Option(help="comma-separated scenarios")] = ",".join(SCENARIOS),
    out: Annotated[Path, typer.Option(help="where verdicts and the summary go")] = ROOT / "out" / "load",
    ready_timeout: Annotated[float, typer.Option(help="seconds to wait for /readyz")] = 600,
) -> None:
    """Run the load scenarios against a service (or a local server it starts); exit 1 on a FAIL."""
    out = out.resolve()  # locust runs in loadtests/: relative paths would land there
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out.mkdir(parents=True, exist_ok=True)
    names = [s for s in scenarios.split(",") if s]
    bad = [s for s in names if s not in SCENARIOS]
    if bad:
        raise typer.BadParameter(f"unknown scenarios {bad}; choose from {SCENARIOS}",
                                 param_hint="--scenarios")

    proc = None
    if url:
        if not is_loopback(url) and not allow_remote:
            raise typer.BadParameter(
                f"{url} is not a loopback address; pass --allow-remote (LOAD_ALLOW_REMOTE=1) "
                "only for a deployment you operate", param_hint="--url")
        profile = profile or ("local" if is_loopback(url) else "cluster")
        wait_ready(url, ready_timeout)
    else:
        profile = profile or "local"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(out, port)
    verdicts: list[dict[str, Any]] = []
    try:
        if proc is not None:
            waited = wait_ready(url, ready_timeout, proc)
            log.info("server ready after %.1f s (pid %d)", waited, proc.pid)
        for name in names:
            v = run_scenario(name, url, out, profile, proc.pid if proc else None)
            verdicts.append(v)
            log.info("%s: %s %s", name, "PASS" if v["passed"] else "FAIL",
                     "; ".join(v.get("failures", [])))
            if proc is not None and proc.poll() is not None:
                log.error("server died during %s (rc=%s)", name, proc.returncode)
                break
    finally:
        if proc is not None:
            rc = stop_server(proc)
            log.info("server stopped (rc=%s)", rc)
    table = summary_table(verdicts)
    (out / "summary.md").write_text(f"profile `{profile}`, target {url}\n\n{table}")
    print(table)
    ok = len(verdicts) == len(names) and all(v["passed"] for v in verdicts)
    if not ok:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """The command line (typer); exits with 0 when every scenario passed, 1 on a FAIL, 2 on
    a usage error."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=__doc__.splitlines()[0])(_run)
    app(args=argv, prog_name="loadtests/run.py")


if __name__ == "__main__":
    main()
