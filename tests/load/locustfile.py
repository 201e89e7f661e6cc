"""Locust load test for lass: REST transcriptions and WebSocket streams, against any URL.

    locust -f tests/load/locustfile.py --host http://127.0.0.1:8000          # web UI
    make loadtest                                                   # headless, SLO gate

Self-contained (no lass import), so it runs in the small image of the compose profile
``loadtest`` too. Settings, from the environment:

- ``LASS_API_KEY``: sent as ``Authorization: Bearer`` (REST and streams) when set;
- ``LOAD_LANGUAGES``: the language mix, ``code=weight`` pairs (``auto`` = no language
  given: the server identifies it), default ``en=4,de=2,es=1,fr=1,auto=1``;
- ``LOAD_FORMATS``: the ``response_format`` mix, default ``json=6,verbose_json=2,text=1,srt=1``;
- ``LOAD_REST_WEIGHT``, ``LOAD_STREAM_WEIGHT``: users of each kind (default 3 and 1);
- ``LOAD_WAIT_S``: a REST user's pause between requests, ``min,max`` (default ``0.5,2``);
- ``LOAD_AUDIO_DIR``: WAV files (16-bit) named ``<language>*.wav`` to send instead of
  speech synthesized here with espeak-ng (one sentence per language, at start).

Requests are named by kind, so the report has one row each: ``POST
/v1/audio/transcriptions`` (a non-2xx answer is a failure, 503/429 sheds included: the
SLO counts them), ``WS /v1/stream final`` (from the last audio frame sent to the last
final, i.e. how long a speaker waits for the end of the text) and ``WS /v1/stream``
(the whole stream at real-time pace; a failure is an error event or a close other than
the normal end).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, User, between, events, task
from locust.env import Environment

# One sentence per language of the default bundle (espeak-ng voices of the same codes).
SENTENCES = {
    "en": "the weather is nice today and we are going for a walk",
    "de": "das wetter ist heute schön und wir gehen spazieren",
    "es": "hoy hace buen tiempo y vamos a dar un paseo",
    "it": "oggi il tempo è bello e andiamo a fare una passeggiata",
    "fr": "il fait beau aujourd'hui et nous allons nous promener",
    "pt": "hoje o tempo está bom e vamos dar um passeio",
    "nl": "het weer is mooi vandaag en we gaan wandelen",
    "pl": "dzisiaj jest ładna pogoda i idziemy na spacer",
    "cs": "dnes je hezké počasí a jdeme na procházku",
    "ru": "сегодня хорошая погода и мы идём гулять",
}
FRAME_S = 0.1  # streamed audio per WebSocket frame


def weights(text: str) -> tuple[list[str], list[float]]:
    """``"a=3,b=1"`` -> (["a", "b"], [3.0, 1.0])."""
    names, values = [], []
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name:
            names.append(name.strip())
            values.append(float(weight or 1))
    if not names or sum(values) <= 0:
        raise ValueError(f"no positive weights in {text!r}")
    return names, values


LANGUAGES = weights(os.environ.get("LOAD_LANGUAGES", "en=4,de=2,es=1,fr=1,auto=1"))
FORMATS = weights(os.environ.get("LOAD_FORMATS", "json=6,verbose_json=2,text=1,srt=1"))
WAIT = [float(x) for x in os.environ.get("LOAD_WAIT_S", "0.5,2").split(",")]
API_KEY = os.environ.get("LASS_API_KEY", "")


@dataclass(frozen=True)
class Clip:
    language: str
    wav: bytes  # the whole file, for REST
    pcm: bytes  # its s16le samples, for streams
    rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * self.rate * self.channels)


CLIPS: dict[str, list[Clip]] = {}


def _read(path: Path, language: str) -> Clip:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: 16-bit WAV needed for streaming")
        pcm = w.readframes(w.getnframes())
        return Clip(language, path.read_bytes(), pcm, w.getframerate(), w.getnchannels())


def load_clips() -> dict[str, list[Clip]]:
    """Clips per language: from LOAD_AUDIO_DIR, else synthesized by espeak-ng."""
    wanted = [lang for lang in LANGUAGES[0] if lang != "auto"] or ["en"]
    folder = os.environ.get("LOAD_AUDIO_DIR")
    clips: dict[str, list[Clip]] = {}
    if folder:
        for lang in wanted:
            clips[lang] = [_read(p, lang) for p in sorted(Path(folder).glob(f"{lang}*.wav"))]
    else:
        out = Path(tempfile.mkdtemp(prefix="lass-load-"))
        for lang in wanted:
            path = out / f"{lang}.wav"
            subprocess.run(
                ["espeak-ng", "-v", lang, "-w", str(path), SENTENCES[lang]],
                check=True,
                capture_output=True,
            )
            clips[lang] = [_read(path, lang)]
    missing = [lang for lang in wanted if not clips.get(lang)]
    if missing:
        raise RuntimeError(f"no audio for {missing} (LOAD_AUDIO_DIR={folder})")
    return clips


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    CLIPS.update(load_clips())


def pick() -> tuple[str, Clip]:
    """(language field, clip): ``auto`` sends a random language's clip without a language."""
    (language,) = random.choices(*LANGUAGES)
    spoken = random.choice(list(CLIPS)) if language == "auto" else language
    return language, random.choice(CLIPS[spoken])


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}


class RestUser(HttpUser):
    """``POST /v1/audio/transcriptions`` with a language and response_format mix."""

    weight = int(os.environ.get("LOAD_REST_WEIGHT", "3"))
    wait_time = between(WAIT[0], WAIT[-1])

    @task
    def transcribe(self) -> None:
        language, clip = pick()
        (response_format,) = random.choices(*FORMATS)
        data = {"response_format": response_format}
        if language != "auto":
            data["language"] = language
        with self.client.post(
            "/v1/audio/transcriptions",
            files={"file": (f"{clip.language}.wav", clip.wav, "audio/wav")},
            data=data,
            headers=auth_headers(),
            name="POST /v1/audio/transcriptions",
            catch_response=True,
            timeout=120,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code} {response.text[:200]}")


class StreamUser(User):
    """``WS /v1/stream``: one clip at real-time pace, then ``stop`` and the finals."""

    weight = int(os.environ.get("LOAD_STREAM_WEIGHT", "1"))
    wait_time = between(0.5, 1.5)

    def _report(self, name: str, seconds: float, size: int, error: str | None) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=seconds * 1000,
            response_length=size,
            exception=RuntimeError(error) if error else None,
            context={},
        )

    @task
    def stream(self) -> None:
        # Imported here: websockets' sync client runs on gevent's patched sockets and
        # threads once locust has patched them (it does so before loading this file).
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        language, clip = pick()
        url = (self.host or "").replace("http", "ws", 1).rstrip("/") + "/v1/stream"
        start = {
            "type": "start",
            "language": None if language == "auto" else language,
            "sample_rate": clip.rate,
            "channels": clip.channels,
        }
        step = int(FRAME_S * clip.rate) * 2 * clip.channels
        opened = time.perf_counter()
        error: str | None = None
        received = 0
        last_final: float | None = None
        try:
            with connect(url, additional_headers=auth_headers(), open_timeout=30) as ws:
                ws.send(json.dumps(start))
                for i, offset in enumerate(range(0, len(clip.pcm), step)):
                    gevent.sleep(max(0.0, opened + i * FRAME_S - time.perf_counter()))
                    ws.send(clip.pcm[offset : offset + step])
                ws.send(json.dumps({"type": "stop"}))
                stopped = time.perf_counter()
                for raw in ws:  # until the server closes after its summary
                    received += len(raw)
                    event = json.loads(raw)
                    if event.get("type") == "error":
                        error = f"error event: {event.get('error', {}).get('code')}"
                    elif event.get("type") == "final":
                        last_final = time.perf_counter()
                if last_final is not None:
                    self._report("WS /v1/stream final", max(0.0, last_final - stopped), 0, None)
                elif error is None:
                    error = "no final transcript"
        except ConnectionClosed as exc:
            error = f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self._report("WS /v1/stream", time.perf_counter() - opened, received, error)
