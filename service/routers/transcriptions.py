"""``POST /v1/audio/transcriptions``: OpenAI-compatible speech to text.

Two body kinds:

- ``multipart/form-data`` exactly as OpenAI's API takes it (``file``, ``model``,
  ``language``, ``prompt``, ``response_format``, ``temperature``,
  ``timestamp_granularities[]``), plus lass's extensions ``hotwords`` (repeated or
  comma-separated; switches to beam search boosting them), ``decoder`` (``greedy`` or
  ``beam``) and ``beam_width``;
- a raw audio body: ``audio/pcm`` (s16le, ``?sample_rate=&channels=``) or any encoded
  ``audio/*`` type, with the same fields as query parameters.

The form is read here rather than by FastAPI's parameter machinery, so every bad field is
answered with a 400 naming it (FastAPI would turn a broken body into a generic 400), and the
size guard (``BodySizeLimitMiddleware``) has already cut off oversized bodies; its fields
are validated by one pydantic model, ``service.params.TranscriptionRequest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from model.audio import AudioError, DecodedAudio, decode_audio, decode_pcm
from service.context import AppContext, get_context
from service.engine import NotReadyError, TranscriptionResult, UnknownLanguageError
from service.engine_errors import engine_error_spec
from service.errors import ApiError, bad_field, from_audio_error
from service.formats import render
from service.params import (
    BEAM_WORK_BUDGET,
    TranscriptionRequest,
    check_beam_work,
    echo,
    openapi_form_schema,
    parse_params,
)
from service.ratelimit import AudioAllowance, audio_allowance

log = logging.getLogger("lass.service")
router = APIRouter(tags=["audio"])

PATH = "/v1/audio/transcriptions"
CLIENT_CLOSED = 499
PCM_TYPES = frozenset({"audio/pcm", "audio/l16", "audio/x-pcm", "audio/s16le"})


@dataclass
class Upload:
    data: bytes
    filename: str | None
    content_type: str | None
    pcm: bool


def refusal(ctx: AppContext, exc: Exception) -> ApiError:
    """The answer to engine error ``exc`` (``service.engine_errors``), counted as a
    rejection when the table says so."""
    spec = engine_error_spec(exc)
    if spec is None:
        raise TypeError(f"not an engine error: {exc!r}")
    if spec.reject is not None:
        ctx.metrics.reject(spec.reject)
    return spec.api_error(exc, ctx.settings.retry_after_s, ctx.engine.languages)


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
                    name = echo(key)
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
        f"unsupported Content-Type {echo(media or '(none)')!r}: send multipart/form-data with a "
        "'file' field, audio/pcm (s16le) or an audio/* body",
        code="unsupported_content_type",
        param="Content-Type",
    )


def _decode(upload: Upload, params: TranscriptionRequest, max_seconds: float) -> DecodedAudio:
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
    docstring), so FastAPI cannot derive it from parameters; the form's schema is
    :class:`service.params.TranscriptionRequest`'s."""
    raw = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": openapi_form_schema()},
            "audio/pcm": raw,
            "audio/*": raw,
        },
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
        raise refusal(ctx, NotReadyError(engine.error or "loading"))
    accepted = [engine.model_id, *ctx.settings.model_aliases]
    if params.model is not None and params.model not in accepted:
        raise bad_field(
            "model",
            f"model {echo(params.model)!r} is not served here; use one of {', '.join(accepted)}",
            code="model_not_found",
        )
    languages = engine.languages
    if params.language is not None and params.language not in languages:
        raise refusal(
            ctx, UnknownLanguageError(f"language {echo(params.language)!r} is not supported")
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
    params: TranscriptionRequest,
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
    allowance.charge(audio.duration)  # 429 over LASS_RATE_LIMIT_AUDIO_SECONDS_PER_MINUTE
    options = params.options(ctx.settings.decoder)
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
        if engine_error_spec(exc) is None:
            raise
        raise refusal(ctx, exc) from exc
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
