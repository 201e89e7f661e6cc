"""The WebSocket side of a stream, shared by both protocols: limits, timeouts, close codes.

:func:`serve_stream` accepts the connection, refuses it when the server is full or not
ready, runs the protocol's handler with a :class:`Channel`, and turns every way a stream
can end into one close code, one ``lass_stream_closes`` reason and, where the client can
still hear it, an error event in OpenAI's shape. No exception escapes to uvicorn.

Close codes (RFC 6455; docs/streaming.md lists them with their error codes):

=====  ===========================================================================
1000   normal: the client stopped and every final was sent
1001   the server is shutting down
1007   a frame's payload is not what the stream declared (bad JSON, bad audio bytes)
1008   a protocol or policy error: bad start message, idle timeout, stream too long
1009   a frame larger than ``LASS_STREAM_MAX_FRAME_BYTES``
1011   an unexpected server error (logged; other streams are unaffected)
1013   try again later: ``LASS_MAX_STREAMS`` streams are open, or the model is not ready
=====  ===========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from service.context import AppContext
from service.errors import openai_error_body

log = logging.getLogger("lass.stream")

NORMAL, GOING_AWAY, BAD_DATA, POLICY, TOO_BIG, INTERNAL, TRY_LATER = (
    1000,
    1001,
    1007,
    1008,
    1009,
    1011,
    1013,
)


class StreamClosedError(Exception):
    """End the stream: ``code`` to close with, ``reason`` for metrics, and an error event
    (``error_code`` and ``message``) unless the client is gone or all went well."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str = "",
        error_code: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message or reason)
        self.code = code
        self.reason = reason
        self.message = message
        self.error_code = error_code
        self.error_type = error_type


def client_error(code: int, error_code: str, message: str) -> StreamClosedError:
    """A stream ended by what the client sent."""
    return StreamClosedError(code, error_code, message, error_code)


class Channel:
    """One accepted WebSocket: ordered sends, receives bounded in size and time."""

    def __init__(self, ws: WebSocket, ctx: AppContext, stream_id: str) -> None:
        self.ws = ws
        self.settings = ctx.settings
        self.stream_id = stream_id
        self.opened_at = time.monotonic()
        self._send_lock = asyncio.Lock()
        self.gone = False

    async def send(self, payload: dict[str, Any]) -> None:
        """Send one JSON event; a vanished client makes it a no-op (the reader notices)."""
        if self.gone:
            return
        async with self._send_lock:
            try:
                await self.ws.send_json(payload)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.gone = True

    async def receive(self) -> str | bytes:
        """The next text or binary message. StreamClosedError on disconnect, idle timeout, a
        frame over the size limit, or a stream past its maximum duration."""
        settings = self.settings
        left = settings.stream_max_duration_s - (time.monotonic() - self.opened_at)
        if left <= 0:
            raise client_error(
                POLICY,
                "max_duration",
                f"the stream reached its maximum duration of {settings.stream_max_duration_s:g} "
                "s (LASS_STREAM_MAX_DURATION_S); open a new one",
            )
        timeout = min(settings.stream_idle_timeout_s, left)
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout)
        except TimeoutError:
            if timeout < settings.stream_idle_timeout_s:
                return await self.receive()  # the duration limit, reported above
            raise client_error(
                POLICY,
                "idle_timeout",
                f"nothing received for {settings.stream_idle_timeout_s:g} s "
                "(LASS_STREAM_IDLE_TIMEOUT_S)",
            ) from None
        if message["type"] == "websocket.disconnect":
            self.gone = True
            raise StreamClosedError(NORMAL, "client_gone")
        data: str | bytes | None = message.get("bytes")
        if data is None:
            data = message.get("text") or ""
        if len(data) > settings.stream_max_frame_bytes:
            raise client_error(
                TOO_BIG,
                "frame_too_large",
                f"a frame of {len(data)} bytes is over the limit of "
                f"{settings.stream_max_frame_bytes} (LASS_STREAM_MAX_FRAME_BYTES); send smaller "
                "frames (20-200 ms of audio each is typical)",
            )
        return data

    async def close(self, code: int) -> None:
        if self.gone or self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            await self.ws.close(code)
        self.gone = True


Handler = Callable[[Channel], Awaitable[None]]
ErrorEvent = Callable[[StreamClosedError], dict[str, Any]]


def native_error(exc: StreamClosedError) -> dict[str, Any]:
    """The native protocol's error event: ``{"type": "error", "error": {...}}``."""
    return {
        "type": "error",
        **openai_error_body(exc.message, exc.error_type, None, exc.error_code),
    }


async def serve_stream(
    ws: WebSocket,
    ctx: AppContext,
    protocol: str,
    handler: Handler,
    error_event: ErrorEvent = native_error,
) -> None:
    """Run one stream from accept to close (see the module docstring)."""
    await ws.accept()
    channel = Channel(ws, ctx, f"{protocol}-{uuid.uuid4().hex[:12]}")
    registry = ctx.streams
    if not registry.acquire():
        ctx.metrics.stream_closes.labels(protocol=protocol, reason="too_many_streams").inc()
        await channel.send(
            error_event(
                StreamClosedError(
                    TRY_LATER,
                    "too_many_streams",
                    f"the server holds its maximum of {ctx.settings.max_streams} streams "
                    "(LASS_MAX_STREAMS); retry later",
                    "too_many_streams",
                    "server_error",
                )
            )
        )
        await channel.close(TRY_LATER)
        return
    ctx.metrics.stream_opened(protocol)
    reason = "normal"
    try:
        engine = ctx.engine
        if not engine.ready or not engine.batcher.accepting:
            raise StreamClosedError(
                TRY_LATER,
                "not_ready",
                f"the model is not ready ({engine.error or engine.state}); retry later",
                "model_not_ready",
                "server_error",
            )
        await handler(channel)
        await channel.close(NORMAL)
    except StreamClosedError as exc:
        reason = exc.reason
        if exc.error_code is not None:
            await channel.send(error_event(exc))
        await channel.close(exc.code)
    except Exception:
        reason = "internal_error"
        log.exception("stream %s failed", channel.stream_id)
        await channel.send(
            error_event(
                StreamClosedError(
                    INTERNAL, reason, "internal server error", "internal_error", "server_error"
                )
            )
        )
        await channel.close(INTERNAL)
    finally:
        registry.release()
        ctx.metrics.stream_closed(protocol, reason)


class StreamRegistry:
    """How many streams are open, against ``LASS_MAX_STREAMS``."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.active = 0

    def acquire(self) -> bool:
        if self.active >= self.max_streams:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
