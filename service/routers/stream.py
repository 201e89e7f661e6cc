"""``WS /v1/stream``: lass's native streaming protocol (docs/streaming.md).

The client sends one JSON ``start`` message, then binary audio frames in the format it
declared, then optionally ``{"type": "stop"}``. The server answers ``started``, then
``speech_started``, ``partial`` and ``final`` events per utterance, ``error`` events in
OpenAI's error shape, and after ``stop`` a ``summary`` before closing with 1000.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, WebSocket
from pydantic import Field, ValidationError

from lass import __version__
from model.audio import AudioError, PcmConverter, PcmFormat
from model.config import SAMPLE_RATE
from service.context import AppContext, get_context
from service.params import Channels, DecodeParams, SampleRate, first_problem
from service.streaming.channel import (
    BAD_DATA,
    FINISH_FIRST,
    POLICY,
    Channel,
    StreamClosedError,
    client_error,
    serve_stream,
)
from service.streaming.endpointer import EndpointConfig
from service.streaming.session import (
    Final,
    Partial,
    SpeechStarted,
    SpeechStopped,
    StreamError,
    StreamEvent,
    StreamOptions,
    StreamSession,
)

router = APIRouter(tags=["streaming"])
PATH = "/v1/stream"


class StartMessage(DecodeParams):
    """The first message of a native stream: the decoding fields and limits of REST's
    (``service.params``), plus the stream's own. Unknown fields are refused."""

    type: Literal["start"]
    language: str | None = None  # None or "auto": identify each utterance's language
    sample_rate: SampleRate = 16_000
    encoding: str = "pcm_s16le"
    channels: Channels = 1
    partials: bool = True
    silence_ms: Annotated[int | None, Field(ge=100, le=5_000)] = None
    prefix_padding_ms: Annotated[int, Field(ge=0, le=2_000)] = 300
    vad_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    max_utterance_s: Annotated[float | None, Field(ge=1)] = None


def parse_json(text: str | bytes) -> dict[str, Any]:
    """A client's JSON message; StreamClosedError (1007) when it is not a JSON object."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise client_error(
            BAD_DATA, "invalid_json", f"a text frame is not valid JSON: {exc}"
        ) from None
    if not isinstance(value, dict):
        raise client_error(BAD_DATA, "invalid_json", "a text frame must hold a JSON object")
    return value


def stream_options(start: StartMessage, ctx: AppContext) -> tuple[StreamOptions, PcmFormat]:
    """The session's options and the frames' format; StreamClosedError (1008) naming the field."""
    settings, engine = ctx.settings, ctx.engine
    language = (start.language or "").lower() or None
    if language == "auto":
        language = None
    if language is not None and language not in engine.languages:
        raise client_error(
            POLICY,
            "unsupported_language",
            f"language {language!r} is not served; choose one of {', '.join(engine.languages)} "
            "or leave it out to identify it",
        )
    try:
        fmt = PcmFormat.parse(start.encoding, start.sample_rate, start.channels)
    except AudioError as exc:
        raise client_error(POLICY, "invalid_value", str(exc)) from None
    max_utterance = settings.stream_max_utterance_s
    if start.max_utterance_s is not None:
        if start.max_utterance_s > max_utterance:
            raise client_error(
                POLICY,
                "invalid_value",
                f"max_utterance_s may be at most {max_utterance:g} (LASS_STREAM_MAX_UTTERANCE_S)",
            )
        max_utterance = start.max_utterance_s
    endpoint = EndpointConfig(
        threshold=start.vad_threshold,
        silence_ms=start.silence_ms if start.silence_ms is not None else settings.stream_silence_ms,
        prefix_padding_ms=start.prefix_padding_ms,
        max_utterance_s=max_utterance,
    )
    decode = start.options(settings.decoder)
    options = StreamOptions(
        language=language,
        partials=start.partials,
        decode=decode,
        endpoint=endpoint,
        partial_interval_s=settings.stream_partial_interval_ms / 1000,
        partial_context_s=settings.stream_partial_context_s,
        lid_seconds=settings.stream_lid_seconds,
    )
    return options, fmt


def event_message(event: StreamEvent) -> dict[str, Any] | None:
    """A session event as the native protocol's JSON (None: not sent)."""
    if isinstance(event, SpeechStarted):
        return {"type": "speech_started", "utterance": event.utterance, "start": event.start}
    if isinstance(event, SpeechStopped):
        return {"type": "speech_stopped", "utterance": event.utterance, "end": event.end}
    if isinstance(event, Partial):
        return {
            "type": "partial",
            "utterance": event.utterance,
            "text": event.text,
            "language": event.language,
            "start": round(event.start, 3),
            "end": round(event.end, 3),
        }
    if isinstance(event, Final):
        return {
            "type": "final",
            "utterance": event.utterance,
            "text": event.text,
            "language": event.language,
            "language_probability": event.language_probability,
            "start": round(event.start, 3),
            "end": round(event.end, 3),
            "words": [
                {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                for w in event.words
            ],
            "endpoint": "forced" if event.forced else "silence",
        }
    if isinstance(event, StreamError):
        return {
            "type": "error",
            "utterance": event.utterance,
            "error": {
                "message": event.message,
                "type": "server_error",
                "param": None,
                "code": event.code,
            },
        }
    return None


async def run_native(channel: Channel, ctx: AppContext) -> None:
    """The native protocol on one accepted channel (see the module docstring)."""
    first = await channel.receive()
    if isinstance(first, bytes):
        raise client_error(
            POLICY, "start_required", "send the JSON start message before any audio frame"
        )
    try:
        start = StartMessage.model_validate(parse_json(first))
    except ValidationError as exc:
        where, problem = first_problem(exc)
        raise client_error(
            POLICY, "invalid_start", f"{'.'.join(where) or 'message'}: {problem}"
        ) from None
    options, fmt = stream_options(start, ctx)
    converter = PcmConverter(fmt)

    async def emit(event: StreamEvent) -> None:
        message = event_message(event)
        if message is not None:
            await channel.send(message)

    engine = ctx.engine
    session = StreamSession(engine, options, emit, channel.stream_id, ctx.metrics)
    await channel.send(
        {
            "type": "started",
            "stream_id": channel.stream_id,
            "model": engine.model_id,
            "language": options.language,
            "languages": engine.languages,
            "encoding": fmt.encoding,
            "sample_rate": fmt.sample_rate,
            "channels": fmt.channels,
            "partials": options.partials,
            "decoder": "beam" if options.decode.beam else "greedy",
            "silence_ms": options.endpoint.silence_ms,
            "max_utterance_s": options.endpoint.max_utterance_s,
            "version": __version__,
        }
    )
    try:
        try:
            while True:
                message = await channel.receive()
                if isinstance(message, bytes):
                    try:
                        samples = converter.convert(message)
                    except AudioError as exc:
                        raise client_error(BAD_DATA, "invalid_audio", str(exc)) from None
                    channel.charge_audio(len(samples) / SAMPLE_RATE)
                    await session.feed(samples)
                    continue
                kind = parse_json(message).get("type")
                if kind == "stop":
                    break
                raise client_error(
                    POLICY,
                    "unknown_event",
                    f"unknown message type {kind!r}: after start, send binary audio frames "
                    'and finally {"type": "stop"}',
                )
        except StreamClosedError as exc:
            if exc.reason in FINISH_FIRST:
                await session.finish()  # what was said is still transcribed
            raise
        await session.feed(converter.flush())
        await session.finish()
        stats = session.stats
        await channel.send(
            {
                "type": "summary",
                "stream_id": channel.stream_id,
                "utterances": stats.utterances,
                "partials": stats.partials,
                "errors": stats.errors,
                "audio_seconds": round(stats.audio_seconds, 3),
                "speech_seconds": round(stats.speech_seconds, 3),
                "languages": stats.languages,
            }
        )
    finally:
        await session.close()


@router.websocket(PATH)
async def stream(ws: WebSocket, ctx: AppContext = Depends(get_context)) -> None:
    """Native streaming transcription (docs/streaming.md)."""

    async def handler(channel: Channel) -> None:
        await run_native(channel, ctx)

    await serve_stream(ws, ctx, "native", handler)


__all__ = ["PATH", "StartMessage", "StreamClosedError", "router"]
