"""Liveness and readiness through a real uvicorn process serving the tiny bundle."""

from __future__ import annotations

import httpx

from tests.conftest import Server


def test_live_answers_200(server: Server) -> None:
    response = httpx.get(server.base_url + "/health/live", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "live"}


def test_ready_after_load_and_warm_up(server: Server) -> None:
    response = httpx.get(server.base_url + "/health/ready", timeout=10)
    assert response.status_code == 200
    body = response.json()
    policy = body.pop("batch_policy")
    assert body == {"status": "ready", "languages": ["de", "en", "es", "it"]}
    # the shared test server names LASS_BATCH_MODE=mixed (auto's timing at warm-up is in
    # tests/bench/test_service_bench.py); ready says which way serves and why
    assert policy["mode"] == policy["way"] == "mixed"
    assert policy["decided_by"] == "LASS_BATCH_MODE"
    assert policy["compiled"] is False  # tests serve with LASS_COMPILE=off
    log = server.log()
    assert "warm-up batch took" in log and "ready: de, en, es, it" in log
    assert "batch policy: " in log
