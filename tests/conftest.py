"""Shared fixtures: real espeak-ng speech in a few languages, free ports, a real uvicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from model.train.data.espeak import SAMPLE_RATE, Voice, synthesize_to_wav

REPO = Path(__file__).resolve().parent.parent

# Short sentences per language; tests that need unseen text write their own.
SENTENCES: dict[str, list[str]] = {
    "en": ["the cat sat on the mat", "good morning to you"],
    "de": ["guten morgen und willkommen", "das wetter ist heute schön"],
    "es": ["buenos días a todos", "el perro come pan"],
    "it": ["buona sera amici miei", "il sole splende oggi"],
}


@dataclass(frozen=True)
class Utterance:
    """One synthesized clip: 16 kHz mono 16-bit WAV and what it says."""

    path: Path
    text: str
    language: str
    duration: float


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Utterance]]:
    """Synthesized utterances per language (espeak-ng), written once per test session."""
    root = tmp_path_factory.mktemp("speech")
    out: dict[str, list[Utterance]] = {}
    for lang, sentences in SENTENCES.items():
        for i, text in enumerate(sentences):
            path = root / lang / f"{i}.wav"
            duration = synthesize_to_wav(text, Voice(lang), path)
            out.setdefault(lang, []).append(Utterance(path, text, lang, duration))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real ``lass serve`` (uvicorn) process on a free port."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    tmp_path: Path, env: dict[str, str] | None = None, ready_path: str = "/health/live"
) -> Server:
    """Start ``lass serve`` in a subprocess and wait until ``ready_path`` answers 200."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    # The eager forward unless a test asks: compiling at warm-up (LASS_COMPILE=auto on the
    # CPU) costs start-up time that every test server would pay.
    full_env = {
        **os.environ,
        "LASS_COMPILE": "off",
        "LASS_HOST": "127.0.0.1",
        "LASS_PORT": str(port),
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lass", "serve"],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


def stop_server(server: Server, timeout: float = 30) -> int:
    """SIGTERM, then wait; returns the exit code."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return int(server.process.returncode)


__all__ = ["REPO", "SAMPLE_RATE", "SENTENCES", "Server", "Utterance", "start_server", "stop_server"]
