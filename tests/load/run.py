"""Run the Locust load test headless and apply the SLO gate (``make loadtest``).

    python -m tests.load.run --duration 60s --users 8 --out runs/loadtest
    python -m tests.load.run --url https://asr.example.com --duration 5m   # any server

Without ``--url`` it starts a local ``lass serve`` (``--server-env K=V`` for its settings),
waits until it is ready, runs Locust (``tests/load/locustfile.py``) for ``--duration``,
stops the server, and writes Locust's CSV files (``lass_stats.csv``, ...) and HTML report
(``report.html``) under ``--out``, with the gate's verdict in ``slo.json``. Exit status 1
when the gate fails (``--slo``, default ``tests/load/slo.toml``): error rate or a p99 over
its bound, or a request kind that got no request.

Locust runs in a child process: it monkey-patches the standard library with gevent, which
must never happen inside pytest or a server.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@dataclass
class Verdict:
    passed: bool
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def gate(stats_csv: Path, slo: dict[str, Any]) -> Verdict:
    """Check Locust's ``*_stats.csv`` against ``slo`` (the TOML's content)."""
    with stats_csv.open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    verdict = Verdict(passed=True)
    total = rows.get("Aggregated")
    count = int(total["Request Count"]) if total else 0
    failed = int(total["Failure Count"]) if total else 0
    rate = failed / count if count else 1.0
    verdict.figures["requests"] = count
    verdict.figures["failures"] = failed
    verdict.figures["error_rate"] = round(rate, 5)
    bound = float(slo.get("max_error_rate", 0.0))
    if not count:
        verdict.failures.append("no requests at all")
    elif rate > bound:
        verdict.failures.append(f"error rate {rate:.4f} > {bound}")
    for name, limit in slo.get("p99_ms", {}).items():
        row = rows.get(name)
        if row is None or int(row["Request Count"]) == 0:
            verdict.failures.append(f"{name}: no request (the bound would be vacuous)")
            continue
        # Locust writes "N/A" for a percentile when only failures were recorded.
        p99 = float(row["99%"]) if row["99%"] not in ("", "N/A") else float("inf")
        verdict.figures[name] = {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "p50_ms": row["50%"],
            "p99_ms": p99,
        }
        if p99 > float(limit):
            verdict.failures.append(f"{name}: p99 {p99:.0f} ms > {limit} ms")
    verdict.passed = not verdict.failures
    return verdict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], log_path: Path, ready_s: float
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {**os.environ, "LASS_HOST": "127.0.0.1", "LASS_PORT": str(port), **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lass", "serve"],
            cwd=REPO,
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lass serve exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"lass serve was not ready within {ready_s:.0f} s; see {log_path}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_locust(url: str, out: Path, users: int, spawn_rate: float, duration: str) -> int:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        duration,
        "--host",
        url,
        "--csv",
        str(out / "lass"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        # Our gate decides, not Locust's own exit code (1 on any failure at all).
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "30",
    ]
    with (out / "locust.log").open("wb") as log:
        return subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="server to load (default: start a local lass serve)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=2.0)
    parser.add_argument("--duration", default="60s", help="Locust --run-time: 60s, 5m, ...")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "loadtest")
    parser.add_argument("--slo", type=Path, default=HERE / "slo.toml")
    parser.add_argument(
        "--server-env", action="append", default=[], help="K=V for the local server"
    )
    parser.add_argument("--ready-s", type=float, default=600.0, help="wait for readiness")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    slo = tomllib.loads(args.slo.read_text())
    process = None
    url = args.url
    if url is None:
        env = dict(item.split("=", 1) for item in args.server_env)
        process, url = start_server(env, args.out / "server.log", args.ready_s)
    try:
        code = run_locust(url, args.out, args.users, args.spawn_rate, args.duration)
    finally:
        if process is not None:
            stop_server(process)
    stats = args.out / "lass_stats.csv"
    if code != 0 or not stats.is_file():
        print(f"locust failed (exit {code}); see {args.out / 'locust.log'}", file=sys.stderr)
        return 1
    verdict = gate(stats, slo)
    (args.out / "slo.json").write_text(
        json.dumps(
            {"passed": verdict.passed, "failures": verdict.failures, **verdict.figures}, indent=2
        )
    )
    print(json.dumps(verdict.figures, indent=2))
    for failure in verdict.failures:
        print(f"SLO failed: {failure}", file=sys.stderr)
    print(f"report: {args.out / 'report.html'}; SLO {'passed' if verdict.passed else 'FAILED'}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
