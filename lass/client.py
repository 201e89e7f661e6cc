"""``lass transcribe FILE`` (REST) and ``lass stream FILE`` (WebSocket): the first two
commands a user tries against a running server.

``stream_pcm`` is also what ``lass bench stream`` and the tests use to play audio into
``/v1/stream`` at real-time pace.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import typer

DEFAULT_URL = "http://127.0.0.1:8000"
FRAME_S = 0.1  # seconds of audio per binary frame


def read_pcm16(path: Path, rate: int = 16_000) -> bytes:
    """Any audio file -> mono 16-bit little-endian PCM at ``rate`` (PyAV)."""
    import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype("<i2").tobytes() if out else b""


def _ws_url(url: str, path: str) -> str:
    base = url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http) :]
    return base + path


async def stream_pcm(
    url: str,
    pcm: bytes,
    start: dict[str, Any],
    *,
    realtime: bool = True,
    frame_s: float = FRAME_S,
    on_event: Callable[[dict[str, Any], float], None] | None = None,
    api_key: str | None = None,
) -> list[dict[str, Any]]:
    """Play ``pcm`` (in the format ``start`` declares) into ``/v1/stream``; every event the
    server sent, in order. ``on_event(event, t)``: called as each arrives, ``t`` seconds
    after the first frame was sent. Frames go at real-time pace unless ``realtime`` is off."""
    import websockets

    rate = int(start.get("sample_rate", 16_000))
    width = 4 if start.get("encoding") in ("pcm_f32le", "f32le", "float32") else 2
    step = max(width, int(frame_s * rate) * width * int(start.get("channels", 1)))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    events: list[dict[str, Any]] = []
    async with websockets.connect(
        _ws_url(url, "/v1/stream"), additional_headers=headers, max_size=None
    ) as ws:
        t0 = time.monotonic()

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                events.append(event)
                if on_event is not None:
                    on_event(event, time.monotonic() - t0)

        reader = asyncio.create_task(receive())
        await ws.send(json.dumps({"type": "start", **start}))
        for i, offset in enumerate(range(0, len(pcm), step)):
            if realtime:
                await asyncio.sleep(max(0.0, t0 + i * frame_s - time.monotonic()))
            await ws.send(pcm[offset : offset + step])
        await ws.send(json.dumps({"type": "stop"}))
        await reader
    return events


def _key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("LASS_API_KEY") or None


def transcribe(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Audio file."),
    url: str = typer.Option(DEFAULT_URL, envvar="LASS_URL", help="The lass server."),
    language: str | None = typer.Option(None, help="Language code; identified when left out."),
    response_format: str = typer.Option("text", help="json, text, srt, vtt or verbose_json."),
    decoder: str | None = typer.Option(None, help="greedy or beam (with the language model)."),
    api_key: str | None = typer.Option(None, help="API key (default: LASS_API_KEY)."),
) -> None:
    """Transcribe FILE through POST /v1/audio/transcriptions and print the result."""
    import httpx

    data = {"response_format": response_format}
    if language:
        data["language"] = language
    if decoder:
        data["decoder"] = decoder
    key = _key(api_key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with file.open("rb") as f:
        try:
            response = httpx.post(
                url.rstrip("/") + "/v1/audio/transcriptions",
                files={"file": (file.name, f)},
                data=data,
                headers=headers,
                timeout=600,
            )
        except httpx.HTTPError as exc:
            typer.echo(f"lass transcribe: cannot reach {url}: {exc}", err=True)
            raise typer.Exit(code=1) from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        typer.echo(f"lass transcribe: {response.status_code}: {message}", err=True)
        raise typer.Exit(code=1)
    typer.echo(response.text.rstrip("\n"))


def stream(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Audio file."),
    url: str = typer.Option(DEFAULT_URL, envvar="LASS_URL", help="The lass server."),
    language: str | None = typer.Option(None, help="Language code; identified when left out."),
    fast: bool = typer.Option(False, "--fast", help="Send as fast as the server takes it."),
    partials: bool = typer.Option(True, help="Show partial results as they change."),
    api_key: str | None = typer.Option(None, help="API key (default: LASS_API_KEY)."),
) -> None:
    """Stream FILE to WS /v1/stream at real-time pace: partials in place, finals on lines."""
    pcm = read_pcm16(file)
    tty = sys.stdout.isatty()
    errors: list[str] = []

    def show(event: dict[str, Any], t: float) -> None:
        kind = event.get("type")
        if kind == "partial" and tty:
            sys.stdout.write(f"\r\033[K[{event['language']}] {event['text']}")
            sys.stdout.flush()
        elif kind == "final":
            prefix = "\r\033[K" if tty else ""
            span = f"{event['start']:7.2f}-{event['end']:7.2f}"
            sys.stdout.write(f"{prefix}{span} [{event['language']}] {event['text']}\n")
            sys.stdout.flush()
        elif kind == "error":
            errors.append(event["error"]["message"])
            typer.echo(f"\nlass stream: error: {event['error']['message']}", err=True)

    start = {"language": language, "sample_rate": 16_000, "partials": partials}
    try:
        asyncio.run(
            stream_pcm(url, pcm, start, realtime=not fast, on_event=show, api_key=_key(api_key))
        )
    except OSError as exc:
        typer.echo(f"lass stream: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except Exception as exc:  # websockets' handshake and close errors
        typer.echo(f"lass stream: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if errors:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Attach ``transcribe`` and ``stream`` to the root ``lass`` command."""
    app.command("transcribe")(transcribe)
    app.command("stream")(stream)
