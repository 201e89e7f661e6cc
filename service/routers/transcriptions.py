"""``POST /v1/audio/transcriptions``: OpenAI-compatible speech to text.

Two body kinds:

- ``multipart/form-data`` exactly as OpenAI's API takes it (``file``, ``model``,
  ``language``, ``prompt``, ``response_format``, ``temperature``,
  ``timestamp_granularities[]``), plus lass's extensions ``hotwords`` (repeated or
  comma-separated; switches to beam search boosting them), ``decoder`` (``greedy`` or
  ``beam``) and ``beam_width``;
- a raw audio body: ``audio/pcm`` (s16le, ``?sample_rate=&channels=``) or any encoded
  ``audio/*`` type, with the same fields as query parameters.

The form is parsed here rather than by FastAPI's parameter machinery, so every bad field is
answered with a 400 naming it (FastAPI would turn a broken body into a generic 400), and the
size guard (``BodySizeLimitMiddleware``) has already cut off oversized bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from service.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    DecodedAudio,
    decode_audio,
    decode_pcm,
)
from service.context import AppContext, get_context
from service.engine import (
    MIN_SAMPLES,
    DecodeOptions,
    TranscriptionResult,
)
from service.engine_errors import engine_api_error, engine_error_spec
from service.errors import ApiError, bad_field, from_audio_error
from service.formats import GRANULARITIES, RESPONSE_FORMATS, render
from service.ratelimit import AudioAllowance, audio_allowance

log = logging.getLogger("lass.service")
router = APIRouter(tags=["audio"])

PATH = "/v1/audio/transcriptions"
CLIENT_CLOSED = 499
# OpenAI fields lass accepts but has no use for (a CTC model has no prompt or sampling).
IGNORED_FIELDS = frozenset({"prompt", "stream", "include[]", "chunking_strategy"})
KNOWN_FIELDS = frozenset(
    {
        "file",
        "model",
        "language",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
        "timestamp_granularities",
        "hotwords",
        "hotwords[]",
        "decoder",
        "beam_width",
        "sample_rate",
        "channels",
    }
    | IGNORED_FIELDS
)
PCM_TYPES = frozenset({"audio/pcm", "audio/l16", "audio/x-pcm", "audio/s16le"})

# Hotwords (docs/api.md, "Limits"): pyctcdecode matches every hotword against every beam's
# text at every frame, so their size multiplies the search's cost (one 1 MB phrase held a
# beam search for 22+ minutes). A hotword is a word or a short phrase.
MAX_HOTWORDS = 100
MAX_HOTWORD_BYTES = 64  # one phrase, UTF-8
MAX_HOTWORD_WORDS = 5  # one phrase
MAX_HOTWORDS_TOTAL_BYTES = 1024
# Beam-search work: beam_width x audio seconds x (1 + hotword bytes / HOTWORD_BYTES_PER_UNIT)
# may not pass BEAM_WORK_BUDGET (or, when larger, what the server's own defaults need:
# LASS_BEAM_WIDTH over LASS_MAX_AUDIO_SECONDS). Measured without an LM, the costly case:
# about 0.3 ms of search per unit on one core, so the budget is ~10 s; beam 16 fits 30 min
# of audio, beam 256 112 s, and 10 hotwords of 8 letters at beam 16 fit 85 s
# (docs/reliability.md).
BEAM_WORK_BUDGET = 28_800
HOTWORD_BYTES_PER_UNIT = 4


@dataclass
class TranscriptionParams:
    """Validated request fields."""

    model: str | None = None
    language: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    granularities: list[str] = field(default_factory=list)
    hotwords: list[str] = field(default_factory=list)
    decoder: str | None = None
    beam_width: int | None = None
    sample_rate: int = 16_000
    channels: int = 1


def _one(fields: Mapping[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_field(name, f"'{name}' given {len(values)} times; give it once")
    return values[0].strip()


def _number(
    fields: Mapping[str, list[str]], name: str, kind: type[int] | type[float]
) -> float | None:
    raw = _one(fields, name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise bad_field(name, f"'{name}' must be a number, got {_echo(raw)!r}") from None
    if not math.isfinite(value):
        raise bad_field(name, f"'{name}' must be finite, got {_echo(raw)!r}")
    return value


def parse_params(fields: Mapping[str, list[str]]) -> TranscriptionParams:
    """Validate text fields (each a list of its values); ApiError 400 naming the field."""
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        name = _echo(unknown[0])
        raise bad_field(name, f"unknown field '{name}'", code="unknown_parameter")
    params = TranscriptionParams(model=_one(fields, "model") or None)
    params.language = (_one(fields, "language") or "").lower() or None
    response_format = _one(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_field(
            "response_format",
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; "
            f"got {_echo(response_format)!r}",
        )
    params.response_format = response_format
    temperature = _number(fields, "temperature", float)
    if temperature is not None:
        if not 0.0 <= temperature <= 1.0:
            raise bad_field("temperature", "temperature must be between 0 and 1")
        params.temperature = temperature
    grans = [
        *fields.get("timestamp_granularities[]", []),
        *fields.get("timestamp_granularities", []),
    ]
    for g in grans:
        if g not in GRANULARITIES:
            raise bad_field(
                "timestamp_granularities[]",
                f"timestamp_granularities[] values are 'word' and 'segment'; got {_echo(g)!r}",
            )
    if grans and response_format != "verbose_json":
        raise bad_field(
            "timestamp_granularities[]",
            "timestamp_granularities[] requires response_format=verbose_json",
        )
    params.granularities = grans or ["segment"]
    params.hotwords = parse_hotwords(fields)
    decoder = _one(fields, "decoder")
    if decoder is not None and decoder not in ("greedy", "beam"):
        raise bad_field("decoder", f"decoder must be 'greedy' or 'beam'; got {_echo(decoder)!r}")
    params.decoder = decoder
    beam_width = _number(fields, "beam_width", int)
    if beam_width is not None:
        if not 1 <= beam_width <= 256:
            raise bad_field("beam_width", "beam_width must be between 1 and 256")
        params.beam_width = int(beam_width)
    sample_rate = _number(fields, "sample_rate", int)
    if sample_rate is not None:
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise bad_field(
                "sample_rate",
                f"sample_rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz",
            )
        params.sample_rate = int(sample_rate)
    channels = _number(fields, "channels", int)
    if channels is not None:
        if not 1 <= channels <= 8:
            raise bad_field("channels", "channels must be between 1 and 8")
        params.channels = int(channels)
    return params


def parse_hotwords(fields: Mapping[str, list[str]]) -> list[str]:
    """``hotwords`` (repeated and/or comma-separated) within the hotword limits."""
    words: list[str] = []
    for raw in [*fields.get("hotwords", []), *fields.get("hotwords[]", [])]:
        if len(raw.encode()) > MAX_HOTWORDS_TOTAL_BYTES:  # before splitting a huge field
            raise bad_field("hotwords", f"hotwords hold at most {MAX_HOTWORDS_TOTAL_BYTES} bytes")
        words.extend(w.strip() for w in raw.split(",") if w.strip())
    if len(words) > MAX_HOTWORDS:
        raise bad_field("hotwords", f"at most {MAX_HOTWORDS} hotwords")
    for word in words:
        if len(word.encode()) > MAX_HOTWORD_BYTES or len(word.split()) > MAX_HOTWORD_WORDS:
            raise bad_field(
                "hotwords",
                f"a hotword is at most {MAX_HOTWORD_WORDS} words and {MAX_HOTWORD_BYTES} bytes;"
                f" got {_echo(word)!r}",
            )
    if sum(len(w.encode()) for w in words) > MAX_HOTWORDS_TOTAL_BYTES:
        raise bad_field("hotwords", f"hotwords hold at most {MAX_HOTWORDS_TOTAL_BYTES} bytes")
    return words


def beam_work(beam_width: int, seconds: float, hotwords: Sequence[str]) -> float:
    """Units of beam-search work (see ``BEAM_WORK_BUDGET``)."""
    hotword_bytes = sum(len(w.encode()) for w in hotwords)
    return beam_width * seconds * (1 + hotword_bytes / HOTWORD_BYTES_PER_UNIT)


def check_beam_work(
    beam_width: int, seconds: float, hotwords: Sequence[str], budget: float
) -> None:
    """ApiError 400 (``beam_search_too_large``) when the search would pass ``budget``."""
    if beam_work(beam_width, seconds, hotwords) <= budget:
        return
    fits = int(budget // beam_work(1, seconds, hotwords))
    advice = f"use beam_width {fits} or less" if fits >= 1 else "send fewer or shorter hotwords"
    raise bad_field(
        "hotwords" if hotwords and fits < 1 else "beam_width",
        f"beam search over {seconds:.1f} s of audio at beam_width {beam_width} with "
        f"{sum(len(w.encode()) for w in hotwords)} bytes of hotwords is over this server's "
        f"budget (beam_width x seconds x (1 + hotword bytes / {HOTWORD_BYTES_PER_UNIT}) <= "
        f"{budget:g}): {advice}, or decoder=greedy",
        code="beam_search_too_large",
    )


def _echo(text: str, limit: int = 100) -> str:
    """A client-supplied value, cut to ``limit`` characters, for an error message."""
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class Upload:
    data: bytes
    filename: str | None
    content_type: str | None
    pcm: bool


def _client_closed() -> ApiError:
    """The client went away mid-upload: nobody reads the answer, but the request metrics
    count it as 499 (nginx's "client closed request"), and it is no server error."""
    log.info("the client closed the connection during its upload")
    return ApiError(CLIENT_CLOSED, "the client closed the request", code="client_closed_request")


T = TypeVar("T")


class DisconnectWatch:
    """Notices the client leaving while its audio is decoded and transcribed, so that the
    work is cancelled: with the body read, the only message left to receive is
    ``http.disconnect``. Without this a client that timed out after 3 s still had all of
    its 1 988 s of audio run through the model (81 s of batches nobody read)."""

    def __init__(self, receive: Receive) -> None:
        self._gone = asyncio.ensure_future(self._until_disconnected(receive))

    @staticmethod
    async def _until_disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def run(self, work: Awaitable[T]) -> T:
        """``work``'s result; if the client leaves first, ``work`` is cancelled (the engine
        then drops its queued pieces; a batch already in the model finishes) and a 499
        raised."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info("the client closed the connection before its answer; its work is cancelled")
        raise ApiError(CLIENT_CLOSED, "the client closed the request", code="client_closed_request")

    def close(self) -> None:
        self._gone.cancel()


async def read_request(request: Request) -> tuple[dict[str, list[str]], Upload]:
    """Text fields and the audio, from a multipart form or a raw audio body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, list[str]] = {}
    if media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=1, max_fields=64)
        except ClientDisconnect as exc:
            raise _client_closed() from exc
        except MultiPartException as exc:
            raise ApiError(
                400, f"malformed multipart body: {exc.message}", code="bad_body"
            ) from exc
        upload: UploadFile | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    name = _echo(key)
                    raise bad_field(
                        name, f"unexpected file field '{name}'; send the audio as 'file'"
                    )
                upload = value
            else:
                fields.setdefault(key, []).append(value)
        if upload is None:
            if "file" in fields:
                raise bad_field("file", "'file' must be a file upload, not a text field")
            raise bad_field(
                "file",
                "missing 'file': attach the audio as multipart field 'file'",
                code="missing_required_parameter",
            )
        data = await upload.read()
        kind = (upload.content_type or "").split(";")[0].strip().lower()
        return fields, Upload(data, upload.filename, upload.content_type, kind in PCM_TYPES)
    if media in PCM_TYPES or media.startswith("audio/") or media == "application/octet-stream":
        for key, value in request.query_params.multi_items():
            fields.setdefault(key, []).append(value)
        try:
            data = await request.body()
        except ClientDisconnect as exc:
            raise _client_closed() from exc
        return fields, Upload(data, None, media, media in PCM_TYPES)
    raise ApiError(
        415,
        f"unsupported Content-Type {_echo(media or '(none)')!r}: send multipart/form-data with a "
        "'file' field, audio/pcm (s16le) or an audio/* body",
        code="unsupported_content_type",
        param="Content-Type",
    )


def _decode(upload: Upload, params: TranscriptionParams, max_seconds: float) -> DecodedAudio:
    if upload.pcm:
        return decode_pcm(upload.data, params.sample_rate, params.channels, max_seconds)
    return decode_audio(upload.data, upload.filename, upload.content_type, max_seconds)


def _timing_header(result: TranscriptionResult, audio_s: float) -> str:
    parts = {
        "audio": audio_s,
        "queue": result.queue_s,
        "inference": result.inference_s,
        "decode": result.decode_s,
    }
    return ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in parts.items())


def _batch_header(result: TranscriptionResult) -> str:
    return ", ".join(
        f"{r.batch_id};size={r.batch_size};languages={'+'.join(r.batch_languages)}"
        for r in result.batches
    )


def _openapi_body() -> dict[str, Any]:
    """The request body for the OpenAPI schema: the route parses it itself (see the module
    docstring), so FastAPI cannot derive it from parameters."""
    text = {"type": "string"}
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "the audio"},
            "model": text,
            "language": text,
            "prompt": text,
            "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANULARITIES)},
            },
            "hotwords": {"type": "array", "items": text, "maxItems": MAX_HOTWORDS},
            "decoder": {"type": "string", "enum": ["greedy", "beam"]},
            "beam_width": {"type": "integer", "minimum": 1, "maximum": 256},
        },
    }
    raw = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": form}, "audio/pcm": raw, "audio/*": raw},
    }


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
    }


@router.post(
    PATH,
    summary="Transcribe audio (OpenAI-compatible)",
    openapi_extra={"requestBody": _openapi_body()},
    responses={
        400: _error_response("a bad field, empty or too short audio, NaN samples"),
        413: _error_response("upload or audio over the limits"),
        415: _error_response("not an allowed audio container, or a bad Content-Type"),
        503: _error_response("busy, not ready, shutting down, or beam search past its budget"),
        504: _error_response("waited too long for the model"),
    },
)
async def create_transcription(
    request: Request,
    ctx: AppContext = Depends(get_context),
    allowance: AudioAllowance = Depends(audio_allowance),
) -> Response:
    """Transcribe one audio file; see docs/api.md for every field."""
    engine = ctx.engine
    fields, upload = await read_request(request)
    params = parse_params(fields)
    if not engine.ready:
        raise ApiError(
            503,
            f"the model is not ready ({engine.error or 'loading'})",
            code="not_ready",
            headers={"Retry-After": str(max(1, ctx.settings.retry_after_s))},
        )
    accepted = [engine.model_id, *ctx.settings.model_aliases]
    if params.model is not None and params.model not in accepted:
        raise bad_field(
            "model",
            f"model {_echo(params.model)!r} is not served here; use one of {', '.join(accepted)}",
            code="model_not_found",
        )
    languages = engine.languages
    if params.language is not None and params.language not in languages:
        raise bad_field(
            "language",
            f"language {_echo(params.language)!r} is not supported; supported: "
            + ", ".join(languages),
            code="unsupported_language",
        )
    if params.language is None and not (engine.worker and engine.worker.has_lid):
        raise bad_field(
            "language",
            "this model cannot identify the language; give 'language', one of "
            + ", ".join(languages),
            code="missing_required_parameter",
        )
    if not upload.data:
        raise ApiError(400, "the audio file is empty", param="file", code="empty_file")
    watch = DisconnectWatch(request.receive)
    try:
        return await _transcribe(ctx, upload, params, allowance, watch)
    finally:
        watch.close()


async def _transcribe(
    ctx: AppContext,
    upload: Upload,
    params: TranscriptionParams,
    allowance: AudioAllowance,
    watch: DisconnectWatch,
) -> Response:
    """Decode, check and transcribe the request's audio; 499 once its client is gone."""
    engine = ctx.engine
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        audio = await watch.run(
            asyncio.to_thread(_decode, upload, params, ctx.settings.max_audio_seconds)
        )
    except AudioError as exc:
        ctx.metrics.reject(exc.code)
        raise from_audio_error(exc) from exc
    audio_s = loop.time() - started
    ctx.metrics.observe_stage("audio_decode", audio_s)
    if audio.samples.size == 0:
        raise ApiError(400, "the audio holds no samples", param="file", code="empty_file")
    if audio.samples.size < MIN_SAMPLES:
        raise ApiError(
            400,
            f"the audio is {audio.duration:.3f} s long; the minimum is 0.1 s",
            param="file",
            code="audio_too_short",
        )
    allowance.charge(audio.duration)  # 429 over LASS_RATE_LIMIT_AUDIO_SECONDS_PER_MINUTE
    options = DecodeOptions(
        beam=(params.decoder or ctx.settings.decoder) == "beam",
        hotwords=tuple(params.hotwords),
        beam_width=params.beam_width,
    )
    if options.beam or options.hotwords:
        settings = ctx.settings
        budget = max(BEAM_WORK_BUDGET, settings.beam_width * settings.max_audio_seconds)
        width = params.beam_width or settings.beam_width
        try:
            check_beam_work(width, audio.duration, params.hotwords, budget)
        except ApiError:
            ctx.metrics.reject("beam_search_too_large")
            raise
    try:
        result = await watch.run(
            engine.transcribe(audio.samples, params.language, options, request_id=uuid.uuid4().hex)
        )
    except Exception as exc:
        error = engine_api_error(exc, ctx.settings.retry_after_s, engine.languages)
        if error is None:
            raise
        spec = engine_error_spec(exc)
        if spec is not None and spec.reject is not None:
            ctx.metrics.reject(spec.reject)
        raise error from exc
    body, media = render(
        result.transcript, audio.duration, params.response_format, params.granularities
    )
    headers = {
        "Server-Timing": _timing_header(result, audio_s),
        "X-Lass-Batches": _batch_header(result),
        "X-Lass-Language": result.language,
    }
    if isinstance(body, dict):
        return JSONResponse(body, headers=headers, media_type=media)
    return PlainTextResponse(body, headers=headers, media_type=media)


def supported_fields() -> Sequence[str]:
    """Every form field the endpoint accepts (for docs and tests)."""
    return sorted(KNOWN_FIELDS)
