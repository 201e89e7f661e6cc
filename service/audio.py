"""The service's side of audio input: the upload size limit.

Decoding (containers, downmix, resampling, raw PCM, stream frames) is ``model.audio``'s,
shared with the trainer, and the routers import it from there; its errors carry a ``code``
and a ``param`` but no HTTP status: ``service.errors.from_audio_error`` maps them to
statuses (``AUDIO_STATUS``).

Upload size: ``BodySizeLimitMiddleware`` (ASGI) counts bytes as they stream in and stops
at the limit, so an oversized upload is never held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.audio import AudioError
from service.errors import from_audio_error

__all__ = ["BodySizeLimitMiddleware", "UploadTooLargeError", "check_content_length"]


class UploadTooLargeError(AudioError):
    """More bytes than the server's upload limit (413)."""

    code = "file_too_large"


def _too_large(max_bytes: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the upload is larger than the limit of {max_bytes} bytes")


def check_content_length(value: str | bytes | None, max_bytes: int) -> None:
    """Raise UploadTooLargeError when a declared ``Content-Length`` is over the limit."""
    if value is None:
        return
    try:
        declared = int(value)
    except ValueError:
        return  # the server rejects a malformed header itself; count the bytes instead
    if declared > max_bytes:
        raise _too_large(max_bytes)


class BodySizeLimitMiddleware:
    """ASGI middleware: 413 with an OpenAI error body once a request body passes ``max_bytes``.

    Checks ``Content-Length`` first, then counts the body as the app pulls it. When the
    limit is passed mid-stream it stops feeding the app, throws away whatever response the
    app makes of that (FastAPI turns a failing form parse into a 400) and answers 413.
    ``paths``: only these paths are limited (None: all). ``on_reject`` is called once per
    rejected request (for metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        paths: Sequence[str] | None = None,
        on_reject: Callable[[AudioError], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = frozenset(paths) if paths is not None else None
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.paths is not None and scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            check_content_length(headers.get(b"content-length"), self.max_bytes)
        except UploadTooLargeError as exc:
            await self._reject(send, exc)
            return

        total = 0
        overflow: UploadTooLargeError | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal total, overflow
            if overflow is not None:
                raise overflow
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    overflow = _too_large(self.max_bytes)
                    raise overflow
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow is not None and not started:
                return  # the app's reaction to the cut-off body; we answer 413 instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if overflow is None or started:
                raise
        if overflow is not None and not started:
            await self._reject(send, overflow)

    async def _reject(self, send: Send, exc: AudioError) -> None:
        if self.on_reject is not None:
            self.on_reject(exc)
        error = from_audio_error(exc)
        body = json.dumps(error.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
