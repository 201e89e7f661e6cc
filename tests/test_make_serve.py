"""`make serve`, the README's first command: sets up (idempotently) and serves the
embedded default model on a port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import jiwer
import pytest

from service.settings import DEFAULT_BUNDLE
from tests.conftest import REPO, Utterance, free_port


@pytest.mark.slow
def test_make_serve_serves_the_default_model(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    port = free_port()
    log_path = tmp_path / "make-serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASS_")}
    with log_path.open("wb") as log:
        # A session of its own, so the whole tree (make, lass) gets the signal.
        proc = subprocess.Popen(
            ["make", "serve", "HOST=127.0.0.1", f"PORT={port}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        live = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                live = httpx.get(base + "/health/live", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert live is not None and live.status_code == 200, log_path.read_text()
        # The repository ships its default model: `make serve` serves it with no download.
        assert (DEFAULT_BUNDLE / "manifest.json").is_file(), "model/default_bundle is missing"
        while time.monotonic() < deadline:
            ready = httpx.get(base + "/health/ready", timeout=5)
            if ready.status_code == 200:
                break
            time.sleep(0.5)
        assert ready.status_code == 200, ready.text
        assert len(ready.json()["languages"]) >= 8
        clip = speech["de"][1]
        answer = httpx.post(
            base + "/v1/audio/transcriptions",
            files={"file": ("de.wav", clip.path.read_bytes(), "audio/wav")},
            data={"model": "whisper-1", "language": "de"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        text = answer.json()["text"]
        assert jiwer.cer(clip.text, text) <= 0.25, (clip.text, text)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
