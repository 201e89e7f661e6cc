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
    # LASS_BATCH_MODE=auto (the default) timed the ways at warm-up and says what it chose
    assert policy["mode"] == "auto" and policy["way"] in {"mixed", "language", "none"}
    assert set(policy["measured_s"]) == {"mixed", "language", "none"}
    assert policy["compiled"] is False  # tests serve with LASS_COMPILE=off
    log = server.log()
    assert "warm-up batch took" in log and "ready: de, en, es, it" in log
    assert "batch policy: " in log
