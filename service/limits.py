"""Connection limits and read timeouts: what a slow or idle client may hold (issue 14).

uvicorn times out only idle keep-alive connections (``timeout_keep_alive``). A client that
opens a connection and sends nothing, sends its headers a byte a second, or sends a body
shorter than its ``Content-Length`` holds a task and a descriptor for ever, and 20 000 such
connections exhausted the process's descriptors (normal requests then failed). Its
``limit_concurrency`` does not help: it counts open connections too, so once idle
connections fill it every new request, however real, is answered 503.

Here, on the HTTP/1.1 connections (:func:`guarded_protocol`, a subclass of uvicorn's
httptools protocol, which ``lass serve`` runs):

- **header timeout**: a request's line and headers must arrive within
  ``LASS_HEADER_TIMEOUT_S`` of the connection opening (or of the request's first byte on
  a kept-alive connection); past it the connection is closed (408 when some of the
  request had come);
- **header size**: at most ``LASS_MAX_HEADER_BYTES`` of request line and headers (431);
- **connection cap**: at most ``LASS_MAX_CONNECTIONS`` open connections (WebSockets
  included), and never more than the descriptors allow (:func:`connection_cap`). At the cap
  a new connection takes the place of the oldest one that has no request running (idle,
  or still sending its headers) for at least ``EVICT_AFTER_S``; when every connection is
  busy the new one is answered 503 with ``Retry-After`` and closed. Slow clients therefore
  cannot keep real ones out: they are the ones that give way;
- a request answered before its body was read (413, 404, ...) closes its connection
  rather than reading the rest of the body.

And in the app (:class:`BodyTimeoutMiddleware`), the **body timeout**: a body must arrive
within ``LASS_BODY_TIMEOUT_S`` plus one second per ``LASS_BODY_MIN_RATE`` bytes received
(a client sending at least that rate never hits it; one sending a byte a second, or
nothing, is cut after ``LASS_BODY_TIMEOUT_S``): 408 ``body_timeout``, connection closed.

``lass serve`` also raises the soft ``RLIMIT_NOFILE`` to the hard limit at start
(:func:`raise_nofile_limit`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("lass.service")

# Descriptors kept for the process's own use at the cap: bundle and LM files, the beam
# search's child processes and their pipes, the metrics server, logs, temporary files of
# uploads being parsed.
RESERVED_FDS = 256
# A connection with no request running must have been so this long before a new one
# takes its place: a real client sends its headers in milliseconds, so a burst of new
# connections at the cap does not evict itself.
EVICT_AFTER_S = 1.0


class ConnectionLimits(BaseSettings):
    """``LASS_*`` settings of this module (read like ``service.settings.Settings``)."""

    model_config = SettingsConfigDict(env_prefix="LASS_", extra="ignore")

    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # Bytes per second: each byte received extends the body's deadline by 1/rate s.
    body_min_rate: Annotated[float, Field(gt=0)] = 4096.0
    max_connections: Annotated[int, Field(ge=1)] = 1024
    keep_alive_s: Annotated[int, Field(ge=1)] = 5


def raise_nofile_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; returns the soft limit
    now in force. Descriptors are what a crowd of connections exhausts first, and the
    soft limit is often far below what the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # RLIM_INFINITY cannot be set for NOFILE on Linux; fs.nr_open (default 2^20) bounds it.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
        return soft
    return target


def connection_cap(requested: int, nofile: int) -> int:
    """The connections to allow: ``requested``, but leaving ``RESERVED_FDS`` descriptors
    (at least a quarter of them when the limit is small) for the process itself."""
    reserve = max(RESERVED_FDS, nofile // 8) if nofile > 4 * RESERVED_FDS else nofile // 4
    return max(1, min(requested, nofile - reserve))


def _error_body(status: int, message: str, code: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _raw_response(status: int, reason: str, message: str, code: str, retry: bool) -> bytes:
    """A whole HTTP/1.1 response, for answers given outside any ASGI request."""
    body = _error_body(status, message, code)
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _HeadersTooLargeError(Exception):
    """Raised from a parser callback to stop parsing (httptools wraps it)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timeout, header size limit, connection
    cap and unread-body close described in the module docstring. Built by
    :func:`guarded_protocol`, which sets the class attributes."""

    limits: ConnectionLimits = ConnectionLimits()
    cap: int = 1024
    on_reject: Callable[[str], None] = staticmethod(lambda reason: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        # When this connection last had no request running (None: one is running).
        self._free_since: float | None = None
        self._header_bytes = 0
        self._request_begun = False
        self._headers_too_large = False
        self._refused = False

    # -------------------------------------------------------------- connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.cap and not self._make_room():
            self.on_reject("connection_limit")
            transport.write(  # type: ignore[attr-defined]
                _raw_response(
                    503,
                    "Service Unavailable",
                    f"the server holds {self.cap} connections with requests running; "
                    "retry later",
                    "connection_limit",
                    retry=True,
                )
            )
            transport.close()
            self._refused = True
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._free_since = time.monotonic()
        self._arm_header_timer()

    def _make_room(self) -> bool:
        """Close the connection that has had no request running the longest (at least
        ``EVICT_AFTER_S``); whether one was closed."""
        oldest: GuardedHttpToolsProtocol | None = None
        limit = time.monotonic() - EVICT_AFTER_S
        for conn in self.connections:
            if not isinstance(conn, GuardedHttpToolsProtocol) or conn._free_since is None:
                continue
            if conn._free_since <= limit and (
                oldest is None or conn._free_since < (oldest._free_since or 0.0)
            ):
                oldest = conn
        if oldest is None:
            return False
        self.on_reject("connection_evicted")
        oldest._close(timed_out=False)
        # connection_lost comes on a later loop turn: take it out of the count now.
        self.connections.discard(oldest)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:  # never set up: nothing of uvicorn's to tear down
            return
        self._cancel_header_timer()
        self._free_since = None
        super().connection_lost(exc)

    def _close(self, timed_out: bool) -> None:
        self._cancel_header_timer()
        self._free_since = None
        if self.transport.is_closing():
            return
        if timed_out and self._request_begun:
            self.transport.write(
                _raw_response(
                    408,
                    "Request Timeout",
                    f"the request's headers did not arrive within "
                    f"{self.limits.header_timeout_s:g} s",
                    "header_timeout",
                    retry=False,
                )
            )
        self.transport.close()

    # -------------------------------------------------------------- headers
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._header_timeout
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        self.on_reject("header_timeout")
        log.info(
            "closed a connection from %s: no complete headers within %g s",
            self.client[0] if self.client else "?",
            self.limits.header_timeout_s,
        )
        self._close(timed_out=True)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._header_bytes = 0
        if self._header_timer is None:  # a kept-alive connection's next request
            self._arm_header_timer()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._headers_too_large = True
            raise _HeadersTooLargeError

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._free_since = None
        self._request_begun = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error with this; a callback's own error is ours.
        if not self._headers_too_large:
            super().send_400_response(msg)
            return
        self._cancel_header_timer()
        self.on_reject("header_too_large")
        self.transport.write(
            _raw_response(
                431,
                "Request Header Fields Too Large",
                f"the request line and headers are over {self.limits.max_header_bytes} bytes",
                "header_too_large",
                retry=False,
            )
        )
        self.transport.close()

    # -------------------------------------------------------------- responses
    def on_response_complete(self) -> None:
        # With nothing pipelined, the request answered is self.cycle: if its body is still
        # arriving (answered before it was read: 413, 404, ...), close rather than read it.
        unread = not self.pipeline and self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if unread:
            self.transport.close()
        elif not self.pipeline:
            self._free_since = time.monotonic()


def guarded_protocol(
    limits: ConnectionLimits, cap: int, on_reject: Callable[[str], None]
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to these limits;
    ``on_reject(reason)`` is called for each connection closed or refused (metrics)."""
    return type(
        "LassHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "cap": cap, "on_reject": staticmethod(on_reject)},
    )


class BodyTimeoutMiddleware:
    """ASGI middleware: 408 ``body_timeout`` when a request body does not arrive in time.

    The deadline is ``timeout_s`` after the request started plus ``1 / min_rate`` s per
    byte received. Past it the app is told the client is gone (``http.disconnect``), its
    answer to that is dropped, and the client gets the 408 with ``Connection: close``
    (whatever else it sends is not read). ``on_reject`` is called once per 408 (metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        timeout_s: float,
        min_rate: float,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        complete = False
        timed_out = False
        response_started = False

        async def timed_receive() -> Message:
            nonlocal received, complete, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if complete:  # the body is in: what comes now is the client leaving
                return await receive()
            left = started + self.timeout_s + received / self.min_rate - loop.time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.0))
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out and not response_started:
                return  # the app's reaction to the "disconnect"; the 408 goes instead
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            # A route that does not expect the client to leave mid-body may raise: the
            # "disconnect" was ours, the 408 is the answer.
            if not timed_out or response_started:
                raise
        if timed_out and not response_started:
            await self._answer_408(send, received)

    async def _answer_408(self, send: Send, received: int) -> None:
        if self.on_reject is not None:
            self.on_reject("body_timeout")
        log.info("request body too slow: %d bytes in its time; answered 408", received)
        body = _error_body(
            408,
            f"the request body did not arrive in time (it must arrive within "
            f"{self.timeout_s:g} s plus 1 s per {self.min_rate:g} bytes)",
            "body_timeout",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 408,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
