"""Liveness through a real uvicorn process."""

from __future__ import annotations

import httpx

from tests.conftest import Server, stop_server


def test_live_answers_200(live_server: Server) -> None:
    response = httpx.get(live_server.base_url + "/health/live", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "live"}


def test_sigterm_shuts_down_gracefully(live_server: Server) -> None:
    # uvicorn finishes its shutdown, then re-raises SIGTERM so the exit status tells
    # a supervisor how the process ended.
    assert stop_server(live_server) in (0, -15)
    log = live_server.log()
    assert "Shutting down" in log
    assert "Finished server process" in log
