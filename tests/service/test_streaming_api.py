"""Streaming against a real ``lass serve`` (uvicorn) with real WebSocket clients: the native
protocol, the OpenAI Realtime subset through the official ``openai`` client, the limits and
every way a stream can go wrong."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from lass.client import read_pcm16, stream_pcm
from tests.conftest import REPO, Server, Utterance, stop_server
from tests.service.conftest import serve

RATE = 16_000


def ws_url(server: Server, path: str) -> str:
    return server.base_url.replace("http://", "ws://") + path


def talk(utterances: list[Utterance], pause: float = 0.8) -> bytes:
    """16 kHz s16le PCM: silence, then each utterance followed by silence."""
    silence = np.zeros(int(pause * RATE), dtype="<i2").tobytes()
    parts = [silence]
    for u in utterances:
        parts += [read_pcm16(u.path), silence]
    return b"".join(parts)


def rest_text(server: Server, pcm: bytes, language: str) -> str:
    response = httpx.post(
        f"{server.base_url}/v1/audio/transcriptions",
        params={"language": language, "response_format": "json"},
        content=pcm,
        headers={"Content-Type": "audio/pcm"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def metric(server: Server, name: str, **labels: str) -> float:
    body = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in body.splitlines():
        head = line.split(" ", 1)[0]
        if head.split("{", 1)[0] == name and (not labels or want in head):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def exchange(
    url: str, messages: list[str | bytes], wait: float = 10.0
) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``messages``, then read until the server closes; (events, close code)."""
    events: list[dict[str, Any]] = []
    async with websockets.connect(url, max_size=None) as ws:
        for m in messages:
            try:
                await ws.send(m)
            except websockets.ConnectionClosed:
                break
        try:
            async with asyncio.timeout(wait):
                while True:
                    events.append(json.loads(await ws.recv()))
        except (TimeoutError, websockets.ConnectionClosed):
            pass
        return events, ws.close_code


START = json.dumps({"type": "start", "language": "de", "sample_rate": RATE})


# ------------------------------------------------------------ native protocol
def test_native_stream_finals_equal_rest_transcripts(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = talk(speech["de"])
    events = asyncio.run(
        stream_pcm(server.base_url, pcm, {"language": "de", "sample_rate": RATE}, realtime=False)
    )
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "summary", kinds
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == 2, kinds
    for final in finals:
        assert final["language"] == "de" and final["endpoint"] == "silence"
        a, b = round(final["start"] * RATE), round(final["end"] * RATE)
        # The final is the REST transcript of exactly that stretch of the stream.
        assert final["text"] == rest_text(server, pcm[2 * a : 2 * b], "de")
        assert all(
            final["start"] <= w["start"] <= w["end"] <= final["end"] + 0.02 for w in final["words"]
        )
    assert finals[0]["end"] <= finals[1]["start"]
    summary = events[-1]
    assert summary["utterances"] == 2 and summary["languages"] == {"de": 2}
    assert summary["audio_seconds"] == pytest.approx(len(pcm) / 2 / RATE, abs=0.01)


def test_partials_come_before_their_final_and_say_the_identified_language(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = talk(speech["es"][:1], pause=1.0)
    events = asyncio.run(
        stream_pcm(server.base_url, pcm, {"sample_rate": RATE, "language": None}, realtime=True)
    )
    kinds = [e["type"] for e in events]
    assert "partial" in kinds and "final" in kinds, kinds
    assert kinds.index("speech_started") < kinds.index("partial") < kinds.index("final")
    final = next(e for e in events if e["type"] == "final")
    partial = next(e for e in events if e["type"] == "partial")
    assert partial["language"] in ("en", "de", "es", "it")
    assert final["language"] in ("en", "de", "es", "it") and final["language_probability"] > 0
    # An utterance's final is REST's transcript of it, language identification included.
    a, b = round(final["start"] * RATE), round(final["end"] * RATE)
    response = httpx.post(
        f"{server.base_url}/v1/audio/transcriptions",
        params={"response_format": "verbose_json"},
        content=pcm[2 * a : 2 * b],
        headers={"Content-Type": "audio/pcm"},
        timeout=60,
    )
    assert response.json()["language"] == final["language"]
    assert response.json()["text"] == final["text"]


def test_streams_of_different_languages_share_mixed_language_batches(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    before = metric(server, "lass_batch_languages_count")
    single = metric(server, "lass_batch_languages_bucket", le="1.0")

    async def run() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(
            *(
                stream_pcm(
                    server.base_url,
                    talk(speech[lang][:1], pause=0.5),
                    {"language": lang, "sample_rate": RATE},
                    realtime=True,
                )
                for lang in ("en", "de", "es", "it")
            )
        )

    results = asyncio.run(run())
    assert all(any(e["type"] == "final" for e in r) for r in results)
    batches = metric(server, "lass_batch_languages_count") - before
    one_language = metric(server, "lass_batch_languages_bucket", le="1.0") - single
    assert batches > one_language, "no batch held windows of two languages"


def test_stream_input_formats_give_the_same_finals(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm16 = talk(speech["it"][:1])
    as_float = (np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768).astype("<f4")
    start = {"language": "it", "sample_rate": RATE}

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        a = await stream_pcm(server.base_url, pcm16, start, realtime=False)
        b = await stream_pcm(
            server.base_url,
            as_float.tobytes(),
            {**start, "encoding": "pcm_f32le"},
            realtime=False,
        )
        return a, b

    a, b = asyncio.run(run())
    finals_a = [e["text"] for e in a if e["type"] == "final"]
    finals_b = [e["text"] for e in b if e["type"] == "final"]
    assert finals_a and finals_a == finals_b


BAD_INPUTS = [
    # (messages after connecting, expected error code, expected close code)
    ([b"\x00\x00"], "start_required", 1008),
    (["{not json"], "invalid_json", 1007),
    ([json.dumps({"type": "start", "colour": "red"})], "invalid_start", 1008),
    ([json.dumps({"type": "start", "language": "xx"})], "unsupported_language", 1008),
    ([json.dumps({"type": "start", "encoding": "opus"})], "invalid_value", 1008),
    ([json.dumps({"type": "start", "sample_rate": 1})], "invalid_start", 1008),
    ([START, b"\x00\x01\x02"], "invalid_audio", 1007),
    ([START, json.dumps({"type": "dance"})], "unknown_event", 1008),
    ([START, b"\x00" * 3_000_000], "frame_too_large", 1009),
]


@pytest.mark.parametrize(("messages", "code", "close"), BAD_INPUTS)
def test_bad_input_gets_an_error_event_and_the_documented_close_code(
    server: Server, messages: list[str | bytes], code: str, close: int
) -> None:
    events, close_code = asyncio.run(exchange(ws_url(server, "/v1/stream"), messages))
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, events
    error = errors[0]["error"]
    assert error["code"] == code and error["message"], error
    assert close_code == close
    assert httpx.get(f"{server.base_url}/health/ready", timeout=5).status_code == 200


# ------------------------------------------------------------ limits
@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Server]:
    srv = serve(
        tmp_path_factory.mktemp("limited"),
        tiny_bundle,
        LASS_MAX_STREAMS="3",
        LASS_STREAM_IDLE_TIMEOUT_S="1.5",
        LASS_STREAM_MAX_DURATION_S="4",
    )
    yield srv
    stop_server(srv)


def test_idle_stream_is_closed_after_the_timeout(limited: Server) -> None:
    start = time.monotonic()
    events, close = asyncio.run(exchange(ws_url(limited, "/v1/stream"), [START], wait=10))
    assert events[-1]["error"]["code"] == "idle_timeout"
    assert close == 1008 and time.monotonic() - start < 6


def test_a_stream_past_its_maximum_duration_is_transcribed_then_closed(
    limited: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = talk(speech["de"][:1], pause=0.3)

    async def run() -> tuple[list[dict[str, Any]], int | None]:
        events: list[dict[str, Any]] = []
        async with websockets.connect(ws_url(limited, "/v1/stream")) as ws:
            await ws.send(START)
            step = RATE // 5 * 2  # 200 ms frames, sent every 0.5 s: never idle for 1.5 s
            with contextlib.suppress(websockets.ConnectionClosed):
                for i in range(0, 10 * len(pcm), step):
                    await ws.send(pcm[i % len(pcm) : i % len(pcm) + step])
                    await asyncio.sleep(0.5)
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    events.append(json.loads(await ws.recv()))
            return events, ws.close_code

    start = time.monotonic()
    events, close = asyncio.run(run())
    assert close == 1008 and time.monotonic() - start < 10
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "max_duration"


def test_streams_beyond_the_maximum_are_refused_with_1013(limited: Server) -> None:
    async def run() -> tuple[list[dict[str, Any]], int | None]:
        url = ws_url(limited, "/v1/stream")
        held = [await websockets.connect(url) for _ in range(3)]
        for ws in held:
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "started"
        try:
            return await exchange(url, [START])
        finally:
            for ws in held:
                await ws.close()

    events, close = asyncio.run(run())
    assert events[0]["error"]["code"] == "too_many_streams" and close == 1013


def test_hundreds_of_dropped_streams_free_everything(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    """Clients that vanish mid-utterance without a close frame: each is noticed at once
    and its work dropped (its socket is read while the handler is busy)."""
    limited = server
    pcm = read_pcm16(speech["en"][0].path)[: RATE * 2]

    async def drop_one() -> None:
        ws = await websockets.connect(ws_url(limited, "/v1/stream"))
        await ws.send(START)
        started = json.loads(await ws.recv())
        assert started["type"] == "started", started
        await ws.send(pcm)  # mid-utterance...
        ws.transport.abort()  # ...the client vanishes without a close frame

    def rss() -> int:
        status = Path(f"/proc/{limited.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    async def run(n: int) -> None:
        for _ in range(n // 3):
            await asyncio.gather(drop_one(), drop_one(), drop_one())

    asyncio.run(run(60))  # warm up allocator pools
    time.sleep(1)
    base = rss()
    gone = metric(limited, "lass_stream_closes_total", reason="client_gone")
    asyncio.run(run(240))
    deadline = time.monotonic() + 15
    while metric(limited, "lass_stream_active") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(limited, "lass_stream_active") == 0
    assert metric(limited, "lass_stream_closes_total", reason="client_gone") - gone == 240
    assert rss() < base * 1.1, (base, rss())
    assert httpx.get(f"{limited.base_url}/health/ready", timeout=5).status_code == 200


# ------------------------------------------------------------ OpenAI Realtime
def realtime_client(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused")


def pcm24(utterances: list[Utterance], pause: float = 0.8) -> bytes:
    silence = np.zeros(int(pause * 24_000), dtype="<i2").tobytes()
    parts = [silence]
    for u in utterances:
        parts += [read_pcm16(u.path, rate=24_000), silence]
    return b"".join(parts)


async def append_all(conn: Any, pcm: bytes, pace: float = 0.0) -> None:
    step = 2400 * 2  # 100 ms at 24 kHz
    for i in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
        if pace:
            await asyncio.sleep(pace)


async def events_until(conn: Any, kind: str, count: int, timeout: float = 30) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in conn:
            out.append(event)
            if sum(e.type == kind for e in out) >= count:
                break
    return out


def test_openai_realtime_client_transcribes_with_server_vad(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = pcm24(speech["en"])

    async def run() -> list[Any]:
        async with realtime_client(server).realtime.connect(
            extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24_000},
                            "transcription": {"model": "whisper-1", "language": "en"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                        }
                    },
                }
            )
            sender = asyncio.create_task(append_all(conn, pcm, pace=0.02))
            events = await events_until(
                conn, "conversation.item.input_audio_transcription.completed", 2
            )
            await sender
            return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    assert events[1].session.audio.input.transcription.language == "en"
    assert kinds.count("input_audio_buffer.speech_started") == 2
    assert kinds.count("input_audio_buffer.speech_stopped") == 2
    committed = [e for e in events if e.type == "input_audio_buffer.committed"]
    completed = [
        e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
    ]
    assert [c.item_id for c in committed] == [c.item_id for c in completed]
    assert committed[1].previous_item_id == committed[0].item_id
    for c in completed:
        assert c.content_index == 0 and c.usage.type == "duration" and c.usage.seconds > 0.5
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    assert started[0].audio_start_ms < started[1].audio_start_ms


def test_openai_realtime_manual_commit_clear_and_errors(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = pcm24(speech["de"][:1], pause=0.2)

    async def run() -> list[Any]:
        async with realtime_client(server).realtime.connect(
            extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {"turn_detection": None, "transcription": {"language": "de"}}
                    },
                }
            )
            await conn.input_audio_buffer.commit()  # nothing appended: an error, not a close
            await conn.send({"type": "response.create"})  # not in the subset: an error
            await append_all(conn, pcm[: len(pcm) // 2])
            await conn.input_audio_buffer.clear()
            await append_all(conn, pcm)
            await conn.input_audio_buffer.commit()
            return await events_until(
                conn, "conversation.item.input_audio_transcription.completed", 1
            )

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    errors = [e.error for e in events if e.type == "error"]
    assert [e.code for e in errors] == ["input_audio_buffer_commit_empty", "unknown_event"]
    assert "input_audio_buffer.speech_started" not in kinds  # no server VAD
    assert kinds.index("input_audio_buffer.cleared") < kinds.index("input_audio_buffer.committed")
    completed = events[-1]
    # Cleared audio was dropped: the committed item is exactly the second append.
    assert completed.usage.seconds == pytest.approx(len(pcm) / 2 / 24_000, abs=0.05)
    assert completed.transcript  # the random tiny model says something


def test_realtime_without_transcription_intent_is_refused(server: Server) -> None:
    events, close = asyncio.run(exchange(ws_url(server, "/v1/realtime"), []))
    assert events[0]["type"] == "error" and events[0]["error"]["code"] == "unsupported_intent"
    assert close == 1008


def test_realtime_bad_session_update_is_an_error_event_and_the_session_goes_on(
    server: Server,
) -> None:
    url = ws_url(server, "/v1/realtime?intent=transcription")
    bad = {"type": "session.update", "event_id": "e1", "session": {"type": "realtime"}}
    fmt = {
        "type": "session.update",
        "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}},
    }
    events, _ = asyncio.run(
        exchange(url, [json.dumps(bad), json.dumps(fmt), "not json", b"\x00"], wait=2)
    )
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == [
        "invalid_value",
        "invalid_value",
        "invalid_json",
        "invalid_value",
    ]
    assert errors[0]["event_id"] == "e1" and errors[0]["param"] == "session.type"
    assert errors[1]["param"] == "session.audio.input.format.type"


# ------------------------------------------------------------ command line
def test_lass_stream_and_lass_transcribe_commands(
    server: Server, speech: dict[str, list[Utterance]], tmp_path: Path
) -> None:
    wav = speech["de"][0].path
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    streamed = subprocess.run(
        [sys.executable, "-m", "lass", "stream", str(wav), "--url", server.base_url, "--fast",
         "--language", "de"],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )  # fmt: skip
    lines = streamed.stdout.strip().splitlines()
    assert lines and all("[de]" in line for line in lines), streamed.stdout
    rest = subprocess.run(
        [sys.executable, "-m", "lass", "transcribe", str(wav), "--url", server.base_url,
         "--language", "de"],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )  # fmt: skip
    assert rest.stdout.strip() == rest_text(server, read_pcm16(wav), "de")
    missing = subprocess.run(
        [sys.executable, "-m", "lass", "stream", str(wav), "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert missing.returncode == 1 and "cannot reach" in missing.stderr


# ------------------------------------------------------------ shutdown
def test_sigterm_lets_open_streams_send_their_finals_then_closes_them_with_1001(
    tmp_path: Path, tiny_bundle: Path, speech: dict[str, list[Utterance]]
) -> None:
    srv = serve(tmp_path, tiny_bundle)
    pcm = talk(speech["de"][:1], pause=0.5)[:-RATE]  # ends mid-speech: utterance open

    async def run() -> tuple[list[dict[str, Any]], int | None, int | None]:
        async with websockets.connect(ws_url(srv, "/v1/stream")) as ws:
            await ws.send(START)
            await ws.recv()
            await ws.send(pcm)
            await asyncio.sleep(0.5)
            srv.process.terminate()  # SIGTERM
            events: list[dict[str, Any]] = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    events.append(json.loads(await ws.recv()))
            refused = None
            try:  # a stream opened during the drain is refused
                await exchange(ws_url(srv, "/v1/stream"), [START], wait=2)
            except OSError:
                refused = -1  # the listener may already be closed: refused either way
            except websockets.InvalidStatus:
                # A handshake caught mid-way by uvicorn's own shutdown (after the drain)
                # is answered by uvicorn, not by lass: refused either way.
                refused = -2
            return events, ws.close_code, refused

    try:
        events, close, _ = asyncio.run(run())
        code = srv.process.wait(timeout=30)
    finally:
        stop_server(srv)
    kinds = [e["type"] for e in events]
    assert "final" in kinds, kinds
    assert kinds[-1] == "error" and events[-1]["error"]["code"] == "server_shutting_down"
    assert close == 1001 and code in (0, -15)  # uvicorn re-raises the SIGTERM it handled


def test_browser_pages_of_other_origins_cannot_open_streams(server: Server) -> None:
    """Browsers apply no CORS to WebSockets: the server checks the Origin itself."""
    url = ws_url(server, "/v1/stream")
    own = server.base_url  # the page the server itself serves

    async def run(origin: str | None) -> tuple[list[dict[str, Any]], int | None]:
        events: list[dict[str, Any]] = []
        kwargs = {"origin": origin} if origin else {}
        async with websockets.connect(url, **kwargs) as ws:  # type: ignore[arg-type]
            # A refused stream may be closed before the start message is even sent.
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(START)
            with contextlib.suppress(websockets.ConnectionClosed):
                events.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"type": "stop"}))
                while True:
                    events.append(json.loads(await ws.recv()))
            return events, ws.close_code

    events, close = asyncio.run(run("http://evil.example"))
    assert events[0]["error"]["code"] == "origin_not_allowed" and close == 1008
    for origin in (own, None):
        events, close = asyncio.run(run(origin))
        assert events[0]["type"] == "started" and close == 1000, origin
