"""Startup, readiness, back-pressure and graceful shutdown of a real ``lass serve`` process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, Server, Utterance, free_port, start_server, stop_server
from tests.service.conftest import make_bundle, serve

URL = "/v1/audio/transcriptions"


def transcribe(server: Server, utt: Utterance, **fields: str) -> httpx.Response:
    return httpx.post(
        server.base_url + URL,
        files={"file": ("a.wav", utt.path.read_bytes(), "audio/wav")},
        data=fields,
        timeout=60,
    )


def test_missing_bundle_stops_startup_naming_the_setting(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LASS_BUNDLE": str(tmp_path / "nowhere"),
        "LASS_PORT": str(free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lass", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "LASS_BUNDLE" in proc.stdout + proc.stderr
    assert "nowhere" in proc.stdout + proc.stderr


def test_broken_bundle_is_live_but_never_ready(
    tmp_path: Path, tiny_bundle: Path, speech: dict[str, list[Utterance]]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    masks = broken / "masks.safetensors"
    data = bytearray(masks.read_bytes())
    data[-1] ^= 0xFF  # checksum no longer matches the manifest
    masks.write_bytes(bytes(data))
    server = start_server(tmp_path, {"LASS_BUNDLE": str(broken)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = httpx.get(server.base_url + "/health/ready", timeout=10)
            if ready.json()["status"] == "failed":
                break
            time.sleep(0.2)
        assert ready.status_code == 503
        assert "masks.safetensors" in ready.json()["error"]
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        response = transcribe(server, speech["en"][0], language="en")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert "Retry-After" in response.headers
    finally:
        stop_server(server)


def test_queue_full_then_sigterm_finishes_the_request_in_flight(
    tmp_path: Path, tiny_bundle: Path, speech: dict[str, list[Utterance]]
) -> None:
    # The first request waits 2 s in the batcher for company; the queue holds only it.
    server = serve(
        tmp_path,
        tiny_bundle,
        LASS_BATCH_MODE="mixed",  # the first request waits in the queue for batch-mates
        LASS_MAX_WAIT_MS="2000",
        LASS_MAX_QUEUE_SIZE="1",
        LASS_RETRY_AFTER_S="3",
    )
    utt = speech["it"][0]
    results: dict[str, httpx.Response] = {}

    def first() -> None:
        results["first"] = transcribe(server, utt, language="it")

    thread = threading.Thread(target=first)
    try:
        thread.start()
        time.sleep(0.8)
        busy = transcribe(server, utt, language="it")
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "queue_full"
        assert busy.headers["Retry-After"] == "3"
        assert "first" not in results  # still in flight
        server.process.terminate()  # SIGTERM while the first request waits in the queue
        thread.join(timeout=60)
        assert results["first"].status_code == 200, results["first"].text
        assert results["first"].json()["text"]
        assert server.process.wait(timeout=60) in (0, -15)
    finally:
        stop_server(server)
    log = server.log()
    assert "Finished server process" in log


def test_without_a_lid_head_language_is_required(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    bundle = make_bundle(
        tmp_path / "nolid",
        ["de", "en"],
        {"de": ["guten tag"], "en": ["good day"]},
        lid_head=False,
    )
    server = serve(tmp_path, bundle)
    try:
        response = transcribe(server, speech["en"][0])
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "language"
        assert "de" in error["message"] and "en" in error["message"]
        assert transcribe(server, speech["en"][0], language="en").status_code == 200
    finally:
        stop_server(server)


def test_missing_default_bundle_is_live_but_not_ready(tmp_path: Path) -> None:
    """Only a bundle the operator named fails fast; a missing packaged default leaves the
    server live and says, in readiness, which setting to change."""
    import asyncio

    from service.engine import Engine
    from service.settings import Settings

    settings = Settings()
    assert "bundle" not in settings.model_fields_set
    settings.__dict__["bundle"] = tmp_path / "no-default-bundle"  # as if none were shipped
    engine = Engine(settings, None)

    async def run() -> None:
        await engine.start()
        try:
            assert engine.state == "failed" and not engine.ready
            assert engine.error is not None and "LASS_BUNDLE" in engine.error
        finally:
            await engine.stop()

    asyncio.run(run())
