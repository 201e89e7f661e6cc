"""The WebSocket side of a stream, shared by both protocols: limits, timeouts, close codes.

:func:`serve_stream` accepts the connection, refuses it when its API key is missing or
wrong, its caller is over a rate limit, or the server is full or not ready, runs the
protocol's handler with a :class:`Channel`, and turns every way a stream can end into one
close code, one ``lass_stream_closes`` reason and, where the client can still hear it, an
error event in OpenAI's shape. No exception escapes to uvicorn.

Close codes (RFC 6455; docs/streaming.md lists them with their error codes):

=====  ===========================================================================
1000   normal: the client stopped and every final was sent
1001   the server is shutting down (after the stream's finals)
1007   a frame's payload is not what the stream declared (bad JSON, bad audio bytes)
1008   a protocol or policy error: bad start message, idle timeout, stream too long, a
       missing or wrong API key (``invalid_api_key``, before any frame is read)
1009   a frame larger than ``LASS_STREAM_MAX_FRAME_BYTES``
1011   an unexpected server error (logged; other streams are unaffected)
1013   try again later: ``LASS_MAX_STREAMS`` streams are open, the model is not ready, or
       the caller is over a rate limit (``rate_limit_exceeded``)
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

from service.auth import Refusal
from service.context import AppContext
from service.errors import openai_error_body
from service.ratelimit import StreamLease, admit_stream

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


# Ends after which what the stream received is still transcribed and sent.
FINISH_FIRST = frozenset({"idle_timeout", "max_duration", "shutting_down", "rate_limit_audio"})


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
    """One accepted WebSocket: ordered sends, and receives bounded in size and time.

    A reader task takes messages off the socket as they come, so a client that vanishes
    is noticed at once (its handler is cancelled and its work dropped) even while the
    handler is busy; it holds at most ``LASS_STREAM_BUFFER_BYTES`` of received, unprocessed
    frames, beyond which it stops reading and TCP slows a client that sends faster than
    the server transcribes.
    """

    def __init__(self, ws: WebSocket, ctx: AppContext, stream_id: str) -> None:
        self.ws = ws
        self.settings = ctx.settings
        self.stream_id = stream_id
        self.opened_at = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._queue: asyncio.Queue[str | bytes | StreamClosedError] = asyncio.Queue()
        self._queued_bytes = 0
        self._drained = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._handler: asyncio.Task[None] | None = None
        self.gone = False
        self.lease: StreamLease | None = None  # the caller's limits, once admitted
        self._metrics = ctx.metrics

    def start_reader(self, handler: asyncio.Task[None]) -> None:
        """Read the socket in the background; cancel ``handler`` when the client goes."""
        self._handler = handler
        self._reader = asyncio.get_running_loop().create_task(
            self._read(handler), name=f"read-{self.stream_id}"
        )

    async def stop_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self, handler: asyncio.Task[None]) -> None:
        limit = self.settings.stream_buffer_bytes
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    self._lost()
                    return
                data: str | bytes | None = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                if len(data) > self.settings.stream_max_frame_bytes:
                    self._queue.put_nowait(self._too_big(len(data)))
                    return
                while self._queued_bytes + len(data) > limit and self._queued_bytes > 0:
                    self._drained.clear()
                    await self._drained.wait()
                self._queued_bytes += len(data)
                self._queue.put_nowait(data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._lost()

    def _lost(self) -> None:
        """The client is gone: drop its work (the handler's ``finally`` frees it)."""
        self.gone = True
        if self._handler is not None:
            self._handler.cancel()

    def interrupt(self, reason: StreamClosedError) -> None:
        """End the stream after the frames already received (``receive`` raises it)."""
        self._queue.put_nowait(reason)

    def _too_big(self, size: int) -> StreamClosedError:
        limit = self.settings.stream_max_frame_bytes
        return client_error(
            TOO_BIG,
            "frame_too_large",
            f"a frame of {size} bytes is over the limit of {limit} "
            "(LASS_STREAM_MAX_FRAME_BYTES); send smaller frames (20-200 ms of audio is typical)",
        )

    async def send(self, payload: dict[str, Any]) -> None:
        """Send one JSON event; a vanished client makes it a no-op (the reader notices)."""
        if self.gone:
            return
        async with self._send_lock:
            try:
                await self.ws.send_json(payload)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._lost()

    async def receive(self) -> str | bytes:
        """The next text or binary message. StreamClosedError on an idle timeout, a frame
        over the size limit, or a stream past its maximum duration."""
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
        if self.gone:  # checked as well as cancelled: a cancel can race a finished get()
            raise StreamClosedError(NORMAL, "client_gone")
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the get() completes, and the client-gone cancel would be lost.
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            if timeout < settings.stream_idle_timeout_s:
                return await self.receive()  # the duration limit, reported above
            raise client_error(
                POLICY,
                "idle_timeout",
                f"nothing received for {settings.stream_idle_timeout_s:g} s "
                "(LASS_STREAM_IDLE_TIMEOUT_S)",
            ) from None
        if isinstance(item, StreamClosedError):
            raise item
        self._queued_bytes -= len(item)
        self._drained.set()
        return item

    def charge_audio(self, seconds: float) -> None:
        """Count ``seconds`` of received audio against the caller's audio allowance;
        StreamClosedError (1013, after what was said is transcribed) once it runs out."""
        if self.lease is None:
            return
        refusal = self.lease.charge_audio(seconds)
        if refusal is None:
            return
        self._metrics.reject(refusal.reason)
        per_minute = self.settings.rate_limit_audio_seconds_per_minute
        raise StreamClosedError(
            TRY_LATER,
            refusal.reason,
            f"Rate limit reached: {per_minute:g} seconds of audio per minute "
            "(LASS_RATE_LIMIT_AUDIO_SECONDS_PER_MINUTE), streams and uploads together; what "
            f"was said is transcribed; open a new stream in {refusal.retry_after} s.",
            refusal.code,
            refusal.type,
        )

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
    # Keys and per-caller limits, before any frame is read. Refused after the accept, not
    # by denying the upgrade with an HTTP status: a browser sees only close code 1006 for
    # that, while an error event and a close code reach every client (docs/api.md).
    lease = admit_stream(ws, ctx)
    if isinstance(lease, Refusal):
        ctx.metrics.stream_closes.labels(protocol=protocol, reason=lease.reason).inc()
        code = TRY_LATER if lease.status == 429 else POLICY
        await channel.send(
            error_event(
                StreamClosedError(code, lease.reason, lease.message, lease.code, lease.type)
            )
        )
        await channel.close(code)
        return
    channel.lease = lease
    registry = ctx.streams
    refusal = registry.acquire(channel)
    if refusal is not None:
        lease.release()
        ctx.metrics.stream_closes.labels(protocol=protocol, reason=refusal.reason).inc()
        await channel.send(error_event(refusal))
        await channel.close(refusal.code)
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
        task: asyncio.Task[None] = asyncio.ensure_future(handler(channel))
        channel.start_reader(task)
        try:
            await task
        except asyncio.CancelledError:
            if not channel.gone:
                raise  # the server is cancelling us, not the client leaving
            raise StreamClosedError(NORMAL, "client_gone") from None
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
        await channel.stop_reader()
        registry.release(channel)
        lease.release()
        log.debug(
            "stream %s closed (%s) after %.1f s; %d open",
            channel.stream_id,
            reason,
            time.monotonic() - channel.opened_at,
            registry.active,
        )
        ctx.metrics.stream_closed(protocol, reason)


class StreamRegistry:
    """The open streams, against ``LASS_MAX_STREAMS``; drains them at shutdown."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._channels: set[Channel] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.draining = False

    @property
    def active(self) -> int:
        return len(self._channels)

    def acquire(self, channel: Channel) -> StreamClosedError | None:
        """Register ``channel``, or the error to refuse it with."""
        if self.draining:
            return StreamClosedError(
                TRY_LATER,
                "shutting_down",
                "the server is shutting down; connect to another instance or retry later",
                "server_shutting_down",
                "server_error",
            )
        if self.active >= self.max_streams:
            return StreamClosedError(
                TRY_LATER,
                "too_many_streams",
                f"the server holds its maximum of {self.max_streams} streams "
                "(LASS_MAX_STREAMS); retry later",
                "too_many_streams",
                "server_error",
            )
        self._channels.add(channel)
        self._empty.clear()
        return None

    def release(self, channel: Channel) -> None:
        self._channels.discard(channel)
        if not self._channels:
            self._empty.set()

    async def drain(self, timeout: float) -> int:
        """Shutdown: refuse new streams; tell every open one to finish (each transcribes
        what it received, sends its finals, an error event ``server_shutting_down`` and
        closes with 1001); wait up to ``timeout`` s. Returns how many were still open."""
        self.draining = True
        for channel in list(self._channels):
            channel.interrupt(
                StreamClosedError(
                    GOING_AWAY,
                    "shutting_down",
                    "the server is shutting down; what was received has been transcribed; "
                    "reconnect to continue",
                    "server_shutting_down",
                    "server_error",
                )
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        return self.active
