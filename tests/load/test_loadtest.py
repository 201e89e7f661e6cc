"""The load test and its SLO gate (tests/load/run.py): the gate on made-up reports, the
compose profile, and a 30 s run of Locust against a real server on the default bundle."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.load.run import gate, main

REST = "POST /v1/audio/transcriptions"
FINAL = "WS /v1/stream final"
SLO = {"max_error_rate": 0.01, "p99_ms": {REST: 5000, FINAL: 3000}}
COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "50%", "99%"]


def stats(tmp_path: Path, rows: list[tuple[str, int, int, str]]) -> Path:
    """A Locust stats CSV with ``(name, requests, failures, p99)`` rows and the total."""
    path = tmp_path / "lass_stats.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for name, count, failed, p99 in rows:
            out.writerow(["", name, count, failed, "100", p99])
        total = (sum(r[1] for r in rows), sum(r[2] for r in rows))
        out.writerow(["", "Aggregated", *total, "100", "0"])
    return path


@pytest.mark.parametrize(
    ("rows", "failure"),
    [
        ([(REST, 100, 0, "900"), (FINAL, 10, 0, "400")], None),
        ([(REST, 100, 2, "900"), (FINAL, 10, 0, "400")], "error rate"),
        ([(REST, 100, 0, "5100"), (FINAL, 10, 0, "400")], f"{REST}: p99"),
        ([(REST, 100, 0, "900"), (FINAL, 3, 3, "N/A")], f"{FINAL}: p99"),
        ([(REST, 100, 0, "900")], f"{FINAL}: no request"),
        ([], "no requests at all"),
    ],
)
def test_the_gate(tmp_path: Path, rows: list[tuple[str, int, int, str]], failure: str) -> None:
    verdict = gate(stats(tmp_path, rows), SLO)
    assert verdict.passed is (failure is None)
    if failure is not None:
        assert any(f.startswith(failure) for f in verdict.failures), verdict.failures


def test_compose_profile_runs_the_locustfile() -> None:
    services: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    locust = services["locust"]
    assert locust["profiles"] == ["loadtest"]  # not started by a plain `docker compose up`
    context = REPO / locust["build"]
    dockerfile = (context / "Dockerfile").read_text()
    assert "COPY locustfile.py slo.toml /load/" in dockerfile
    assert (context / "locustfile.py").is_file() and (context / "slo.toml").is_file()
    assert locust["command"][:2] == ["--host", "http://lass:8000"]


@pytest.mark.slow
def test_a_short_load_test_meets_the_slo(tmp_path: Path) -> None:
    """30 s, 4 users (3 REST, 1 stream) on the default bundle, as `make loadtest` runs."""
    code = main(
        [
            "--duration",
            "30s",
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--out",
            str(tmp_path),
            "--server-env",
            "LASS_COMPILE=off",
        ]
    )
    verdict = json.loads((tmp_path / "slo.json").read_text())
    assert code == 0, verdict
    assert verdict["passed"] and verdict["error_rate"] == 0
    assert verdict[REST]["requests"] >= 10 and verdict[FINAL]["requests"] >= 1
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "lass_stats_history.csv").is_file()
