"""``WS /v1/realtime?intent=transcription``: the transcription subset of OpenAI's Realtime
API (GA event names and fields, as the ``openai`` package's realtime client speaks them).

Client events: ``session.update`` (``session.type`` ``"transcription"``; input format,
transcription model, language and keywords, ``server_vad`` turn detection or ``null``),
``input_audio_buffer.append`` / ``.commit`` / ``.clear``. Server events:
``session.created`` / ``.updated``, ``input_audio_buffer.speech_started`` /
``.speech_stopped`` / ``.committed`` / ``.cleared``,
``conversation.item.input_audio_transcription.delta`` / ``.completed`` / ``.failed`` and
``error``. What is not supported is listed in docs/streaming.md; a client event lass does
not know gets an ``error`` event and the session goes on, as OpenAI's server does.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Depends, WebSocket

from model.audio import AudioError, PcmConverter, PcmFormat
from model.config import SAMPLE_RATE
from service.context import AppContext, get_context
from service.engine import DecodeOptions
from service.routers.stream import parse_json
from service.streaming.channel import (
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
PATH = "/v1/realtime"
# OpenAI's formats: 24 kHz PCM16, and G.711 at 8 kHz. A PCM ``rate`` other than 24000 is a
# lass extension.
FORMATS = {"audio/pcm": "pcm_s16le", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms of audio


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def _item_id() -> str:
    return f"item_{uuid.uuid4().hex[:20]}"


class RealtimeError(Exception):
    """A client event lass refuses: answered with an ``error`` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def error_event(
    code: str | None,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    client_event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": _event_id(),
        "error": {
            "type": type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def closing_error(exc: StreamClosedError) -> dict[str, Any]:
    """The error event sent before the server closes a Realtime socket."""
    return error_event(exc.error_code, exc.message, type=exc.error_type)


@dataclass
class SessionConfig:
    """The effective transcription session, as ``session.created``/``.updated`` show it."""

    id: str
    format_type: str = "audio/pcm"
    rate: int = 24_000
    model: str = "whisper-1"
    language: str | None = None
    prompt: str = ""
    keywords: list[str] = field(default_factory=list)
    turn_detection: dict[str, Any] | None = field(
        default_factory=lambda: {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
        }
    )

    def to_dict(self) -> dict[str, Any]:
        fmt: dict[str, Any] = {"type": self.format_type}
        if self.format_type == "audio/pcm":
            fmt["rate"] = self.rate
        return {
            "type": "transcription",
            "id": self.id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": {
                        "model": self.model,
                        "language": self.language,
                        "prompt": self.prompt,
                        "keywords": self.keywords,
                    },
                    "turn_detection": self.turn_detection,
                    "noise_reduction": None,
                }
            },
            "include": None,
        }

    def pcm_format(self) -> PcmFormat:
        rate = self.rate if self.format_type == "audio/pcm" else 8_000
        return PcmFormat.parse(FORMATS[self.format_type], rate)


def apply_update(config: SessionConfig, session: Any, languages: list[str]) -> SessionConfig:
    """``config`` with the fields a ``session.update`` names; RealtimeError naming the field."""
    if not isinstance(session, dict):
        raise RealtimeError("invalid_value", "session must be an object", "session")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise RealtimeError(
            "invalid_value",
            f"session.type {kind!r} is not supported: lass serves transcription sessions only",
            "session.type",
        )
    new = replace(config)
    audio_input = (session.get("audio") or {}).get("input") or {}
    if not isinstance(audio_input, dict):
        raise RealtimeError("invalid_value", "audio.input must be an object", "session.audio.input")
    if "format" in audio_input:
        fmt = audio_input["format"] or {}
        kind = fmt.get("type", "audio/pcm")
        if kind not in FORMATS:
            raise RealtimeError(
                "invalid_value",
                f"format {kind!r} is not supported; use one of {', '.join(FORMATS)}",
                "session.audio.input.format.type",
            )
        new.format_type = kind
        new.rate = int(fmt.get("rate") or 24_000) if kind == "audio/pcm" else 8_000
        try:
            new.pcm_format()
        except AudioError as exc:
            raise RealtimeError(
                "invalid_value", str(exc), "session.audio.input.format.rate"
            ) from None
    if "transcription" in audio_input:
        tr = audio_input["transcription"] or {}
        if tr.get("model"):
            new.model = str(tr["model"])
        if "language" in tr:
            language = (tr["language"] or "").lower() or None
            if language is not None and language not in languages:
                raise RealtimeError(
                    "invalid_value",
                    f"language {language!r} is not served; choose one of {', '.join(languages)} "
                    "or null to identify it",
                    "session.audio.input.transcription.language",
                )
            new.language = language
        if "prompt" in tr:
            new.prompt = str(tr["prompt"] or "")
        if "keywords" in tr:
            keywords = tr["keywords"] or []
            if (
                not isinstance(keywords, list)
                or len(keywords) > 100
                or any(not isinstance(k, str) or len(k) > 100 for k in keywords)
            ):
                raise RealtimeError(
                    "invalid_value",
                    "keywords must be a list of at most 100 strings of at most 100 characters",
                    "session.audio.input.transcription.keywords",
                )
            new.keywords = list(keywords)
    if "turn_detection" in audio_input:
        new.turn_detection = _turn_detection(audio_input["turn_detection"])
    return new


def _turn_detection(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        kind = value.get("type") if isinstance(value, dict) else value
        raise RealtimeError(
            "invalid_value",
            f"turn_detection {kind!r} is not supported; use server_vad or null",
            "session.audio.input.turn_detection.type",
        )
    out = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    }
    for key, lo, hi in (
        ("threshold", 0.0, 1.0),
        ("prefix_padding_ms", 0, 2_000),
        ("silence_duration_ms", 100, 5_000),
    ):
        if value.get(key) is not None:
            v = value[key]
            if (
                not isinstance(v, int | float)
                or not lo <= v <= hi
                or (key == "threshold" and v in (0, 1))
            ):
                raise RealtimeError(
                    "invalid_value",
                    f"{key} must be a number in ({lo}, {hi})"
                    if key == "threshold"
                    else f"{key} must be from {lo} to {hi}",
                    f"session.audio.input.turn_detection.{key}",
                )
            out[key] = v
    return out


class RealtimeStream:
    """One Realtime transcription connection."""

    def __init__(self, channel: Channel, ctx: AppContext) -> None:
        self.channel = channel
        self.ctx = ctx
        self.config = SessionConfig(id=f"sess_{uuid.uuid4().hex[:20]}")
        self.converter = PcmConverter(self.config.pcm_format())
        self.session = self._new_session()
        self.items: dict[int, str] = {}  # utterance -> item id
        self.sent: dict[int, str] = {}  # utterance -> text sent as deltas
        self.previous_item: str | None = None
        self.uncommitted = 0.0  # seconds appended since the last commit/clear

    def _new_session(self) -> StreamSession:
        cfg, settings = self.config, self.ctx.settings
        td = cfg.turn_detection
        endpoint = EndpointConfig(
            threshold=float(td["threshold"]) if td else 0.5,
            silence_ms=int(td["silence_duration_ms"]) if td else 500,
            prefix_padding_ms=int(td["prefix_padding_ms"]) if td else 300,
            max_utterance_s=settings.stream_max_utterance_s,
        )
        hotwords = tuple(cfg.keywords)
        options = StreamOptions(
            language=cfg.language,
            decode=DecodeOptions(
                beam=bool(hotwords) or settings.decoder == "beam", hotwords=hotwords
            ),
            endpoint=endpoint,
            vad=td is not None,
            partial_interval_s=settings.stream_partial_interval_ms / 1000,
            partial_context_s=settings.stream_partial_context_s,
            lid_seconds=settings.stream_lid_seconds,
        )
        return StreamSession(
            self.ctx.engine, options, self.emit, self.channel.stream_id, self.ctx.metrics
        )

    def _item(self, utterance: int) -> str:
        if utterance not in self.items:
            self.items[utterance] = _item_id()
        return self.items[utterance]

    async def send(self, payload: dict[str, Any]) -> None:
        await self.channel.send({"event_id": _event_id(), **payload})

    async def emit(self, event: StreamEvent) -> None:
        if isinstance(event, SpeechStarted):
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": int(event.start * 1000),
                    "item_id": self._item(event.utterance),
                }
            )
        elif isinstance(event, SpeechStopped):
            item = self._item(event.utterance)
            if self.session.options.vad:
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": int(event.end * 1000),
                        "item_id": item,
                    }
                )
            await self.send(
                {
                    "type": "input_audio_buffer.committed",
                    "previous_item_id": self.previous_item,
                    "item_id": item,
                }
            )
            self.previous_item = item
            self.uncommitted = 0.0
        elif isinstance(event, Partial):
            sent = self.sent.get(event.utterance, "")
            if event.text.startswith(sent) and len(event.text) > len(sent):
                await self._delta(event.utterance, event.text[len(sent) :])
                self.sent[event.utterance] = event.text
        elif isinstance(event, Final):
            sent = self.sent.pop(event.utterance, "")
            if event.text.startswith(sent) and len(event.text) > len(sent):
                await self._delta(event.utterance, event.text[len(sent) :])
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": self.items.pop(event.utterance, _item_id()),
                    "content_index": 0,
                    "transcript": event.text,
                    "usage": {"type": "duration", "seconds": round(event.end - event.start, 3)},
                    "language": event.language,  # lass extension: the utterance's language
                }
            )
        elif isinstance(event, StreamError):
            item = self.items.pop(event.utterance, "") if event.utterance is not None else ""
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item,
                    "content_index": 0,
                    "error": {
                        "type": "server_error",
                        "code": event.code,
                        "message": event.message,
                        "param": None,
                    },
                }
            )

    async def _delta(self, utterance: int, text: str) -> None:
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": self._item(utterance),
                "content_index": 0,
                "delta": text,
            }
        )

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.config.to_dict()})
        try:
            while True:
                message = await self.channel.receive()
                client_event_id: str | None = None
                try:
                    if isinstance(message, bytes):
                        raise RealtimeError(
                            "invalid_value",
                            "binary frames are not part of the Realtime protocol; send "
                            "input_audio_buffer.append events with base64 audio",
                        )
                    try:
                        event = parse_json(message)
                    except StreamClosedError as exc:
                        raise RealtimeError("invalid_json", exc.message) from None
                    client_event_id = event.get("event_id")
                    await self.handle(event)
                except RealtimeError as exc:
                    await self.channel.send(
                        error_event(
                            exc.code, exc.message, param=exc.param, client_event_id=client_event_id
                        )
                    )
        except StreamClosedError as exc:
            if exc.reason in FINISH_FIRST:
                await self.session.finish()
            raise
        finally:
            await self.session.close()

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            audio = event.get("audio")
            if not isinstance(audio, str):
                raise RealtimeError("invalid_value", "audio must be a base64 string", "audio")
            try:
                data = base64.b64decode(audio, validate=True)
                samples = self.converter.convert(data)
            except (binascii.Error, ValueError) as exc:
                raise RealtimeError("invalid_value", f"audio: {exc}", "audio") from None
            self.uncommitted += self.converter.format.seconds(len(data))
            self.channel.charge_audio(len(samples) / SAMPLE_RATE)
            await self.session.feed(samples)
        elif kind == "input_audio_buffer.commit":
            if self.uncommitted * 1000 < MIN_COMMIT_MS:
                raise RealtimeError(
                    "input_audio_buffer_commit_empty",
                    f"buffer too small: expected at least {MIN_COMMIT_MS}ms of audio, but "
                    f"buffer only has {self.uncommitted * 1000:.2f}ms of audio",
                )
            await self.session.commit()
        elif kind == "input_audio_buffer.clear":
            await self.session.clear()
            self.uncommitted = 0.0
            await self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "session.update":
            self.config = apply_update(self.config, event.get("session"), self.ctx.engine.languages)
            await self.session.finish()  # what was said under the old settings is done
            self.converter = PcmConverter(self.config.pcm_format())
            self.session = self._new_session()
            await self.send({"type": "session.updated", "session": self.config.to_dict()})
        else:
            raise RealtimeError(
                "unknown_event",
                f"event type {kind!r} is not supported by lass's Realtime transcription subset "
                "(docs/streaming.md lists what is)",
                "type",
            )


@router.websocket(PATH)
async def realtime(
    ws: WebSocket, intent: str | None = None, ctx: AppContext = Depends(get_context)
) -> None:
    """OpenAI Realtime API, transcription sessions (docs/streaming.md)."""

    async def handler(channel: Channel) -> None:
        if intent != "transcription":
            raise client_error(
                POLICY,
                "unsupported_intent",
                "lass serves Realtime transcription sessions only: connect with "
                "?intent=transcription",
            )
        await RealtimeStream(channel, ctx).run()

    await serve_stream(ws, ctx, "realtime", handler, closing_error)
