"""Rate limits per key (per client address with keys off): docs/api.md, "Keys, limits and CORS".

Two token buckets per caller: requests (every guarded HTTP request and every stream
opened costs 1) and audio seconds (a transcription costs its duration once decoded; see
:class:`AudioAllowance`). A bucket holds one minute's worth (the burst) and refills
continuously at the per-minute rate. A request that finds too few tokens is refused with
429 and ``Retry-After``, the seconds until there are enough; refused requests take nothing,
so a caller that keeps hammering is not locked out for longer. A file longer than a whole
minute's allowance is accepted when the bucket is full and leaves it in debt (its long-run
rate stays the limit, and the file is not refused forever). ``LASS_MAX_STREAMS_PER_KEY``
bounds a caller's open streams.

Buckets live in the event loop's thread (every caller of this module is ``async``), so they
need no lock. Their memory is bounded: a bucket that has refilled is the same as no bucket,
so idle ones are dropped as they come up in least-recently-used order, and beyond
``MAX_BUCKETS`` the least recently used goes regardless (at worst handing that caller a
fresh burst).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Depends
from starlette.websockets import WebSocket

from service.auth import Principal, Refusal, authorize, identify
from service.context import AppContext, get_context
from service.settings import Settings

MAX_BUCKETS = 50_000  # per kind; ~150 bytes each


class TokenBuckets:
    """One token bucket per identity: ``per_minute`` tokens of burst, refilled continuously."""

    def __init__(
        self,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self.max_buckets = max_buckets
        # identity -> (tokens, when); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def level(self, identity: str, now: float | None = None) -> float:
        """Tokens in ``identity``'s bucket now (a full bucket when it has none)."""
        now = self.clock() if now is None else now
        state = self._buckets.get(identity)
        if state is None:
            return self.capacity
        tokens, when = state
        return min(self.capacity, tokens + (now - when) * self.rate)

    def take(self, identity: str, cost: float) -> float:
        """Take ``cost`` tokens: 0.0 when taken, else the seconds until there are enough
        (nothing is taken then). A cost over the capacity needs a full bucket."""
        now = self.clock()
        tokens = self.level(identity, now)
        need = min(cost, self.capacity)
        if tokens < need:
            return (need - tokens) / self.rate
        self._buckets[identity] = (tokens - cost, now)
        self._buckets.move_to_end(identity)
        self._evict(now)
        return 0.0

    def _evict(self, now: float) -> None:
        while self._buckets:
            oldest = next(iter(self._buckets))
            if len(self._buckets) <= self.max_buckets and self.level(oldest, now) < self.capacity:
                return
            del self._buckets[oldest]


class RateLimiter:
    """The limits of ``LASS_RATE_LIMIT_*`` and ``LASS_MAX_STREAMS_PER_KEY`` (0 = none)."""

    def __init__(
        self,
        requests_per_minute: float = 0.0,
        audio_seconds_per_minute: float = 0.0,
        max_streams: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = TokenBuckets(requests_per_minute, clock) if requests_per_minute else None
        self.audio = (
            TokenBuckets(audio_seconds_per_minute, clock) if audio_seconds_per_minute else None
        )
        self.max_streams = max_streams
        self._streams: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            settings.rate_limit_requests_per_minute,
            settings.rate_limit_audio_seconds_per_minute,
            settings.max_streams_per_key,
        )

    @staticmethod
    def _retry_after(wait: float) -> int:
        return max(1, math.ceil(wait))

    def take_request(self, identity: str) -> Refusal | None:
        """One request's token, or the 429 refusal."""
        if self.requests is None:
            return None
        wait = self.requests.take(identity, 1.0)
        if wait == 0.0:
            return None
        retry = self._retry_after(wait)
        return Refusal(
            429,
            "rate_limit_exceeded",
            "rate_limit_requests",
            f"Rate limit reached: {self.requests.capacity:g} requests per minute "
            f"(LASS_RATE_LIMIT_REQUESTS_PER_MINUTE); retry in {retry} s.",
            type="requests",
            retry_after=retry,
        )

    def take_audio(self, identity: str, seconds: float) -> Refusal | None:
        """``seconds`` of audio from the caller's allowance, or the 429 refusal."""
        if self.audio is None:
            return None
        wait = self.audio.take(identity, seconds)
        if wait == 0.0:
            return None
        retry = self._retry_after(wait)
        return Refusal(
            429,
            "rate_limit_exceeded",
            "rate_limit_audio",
            f"Rate limit reached: {self.audio.capacity:g} seconds of audio per minute "
            f"(LASS_RATE_LIMIT_AUDIO_SECONDS_PER_MINUTE); this file is {seconds:.1f} s, retry "
            f"in {retry} s.",
            type="audio_seconds",
            retry_after=retry,
        )

    def open_stream(self, identity: str) -> Refusal | None:
        """Count one more open stream for ``identity``, or refuse it (release with
        :meth:`close_stream`)."""
        held = self._streams.get(identity, 0)
        if self.max_streams and held >= self.max_streams:
            return Refusal(
                429,
                "rate_limit_exceeded",
                "rate_limit_streams",
                f"Rate limit reached: {self.max_streams} open streams per key "
                "(LASS_MAX_STREAMS_PER_KEY); close one first.",
                type="streams",
            )
        self._streams[identity] = held + 1
        return None

    def close_stream(self, identity: str) -> None:
        held = self._streams.get(identity, 0) - 1
        if held > 0:
            self._streams[identity] = held
        else:
            self._streams.pop(identity, None)  # only open streams take memory

    @property
    def open_streams(self) -> int:
        return sum(self._streams.values())


@dataclass
class AudioAllowance:
    """The caller's audio-seconds bucket, for a route that knows the duration only after
    decoding: it calls :meth:`charge` with it before any inference."""

    ctx: AppContext
    principal: Principal

    def charge(self, seconds: float) -> None:
        """Take ``seconds``; ApiError 429 (``rate_limit_exceeded``) when over the limit."""
        refusal = self.ctx.limits.take_audio(self.principal.bucket, seconds)
        if refusal is not None:
            self.ctx.metrics.reject(refusal.reason)
            raise refusal.api_error()


async def audio_allowance(
    principal: Principal = Depends(authorize), ctx: AppContext = Depends(get_context)
) -> AudioAllowance:
    """FastAPI dependency: the :class:`AudioAllowance` of the request's caller (``authorize``
    runs once per request however many dependencies name it)."""
    return AudioAllowance(ctx, principal)


@dataclass
class StreamLease:
    """An admitted stream's hold on its caller's stream count; :meth:`release` once closed."""

    limiter: RateLimiter
    principal: Principal
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.close_stream(self.principal.bucket)

    def charge_audio(self, seconds: float) -> Refusal | None:
        """Take ``seconds`` of received audio from the caller's allowance (the same bucket
        as uploads: LASS_RATE_LIMIT_AUDIO_SECONDS_PER_MINUTE), or the refusal."""
        return self.limiter.take_audio(self.principal.bucket, seconds)


def foreign_origin(ws: WebSocket, cors_origins: str) -> str | None:
    """The browser page's origin when it may not open a stream here, else None.

    Browsers apply no CORS to WebSockets, so without this any web site a user visits could
    stream into a server on their machine. Clients that are not browsers send no Origin.
    Allowed: the server's own pages (the Origin's host is the Host the browser connected
    to) and the origins of ``LASS_CORS_ORIGINS`` (``*`` allows every origin)."""
    origin = ws.headers.get("origin")
    if not origin:
        return None
    allowed = {o.strip().rstrip("/") for o in cors_origins.split(",") if o.strip()}
    if "*" in allowed or origin.rstrip("/") in allowed:
        return None
    host = ws.headers.get("host", "")
    if urlsplit(origin).netloc.lower() == host.lower():
        return None
    return origin


def admit_stream(ws: WebSocket, ctx: AppContext) -> StreamLease | Refusal:
    """A WebSocket's key (header or ``?api_key=``), a request token and a stream slot of its
    caller; or the refusal to send before closing (counted in ``lass_rejected_requests``)."""
    foreign = foreign_origin(ws, ctx.settings.cors_origins)
    if foreign is not None:
        ctx.metrics.reject("origin_not_allowed")
        return Refusal(
            403,
            "origin_not_allowed",
            "origin_not_allowed",
            f"WebSocket from origin {foreign[:100]!r} refused: only the server's own pages "
            "and LASS_CORS_ORIGINS may open streams from a browser",
        )
    principal = identify(ws, ctx, websocket=True)
    if isinstance(principal, Refusal):
        return principal
    limits = ctx.limits
    refusal = limits.take_request(principal.bucket) or limits.open_stream(principal.bucket)
    if refusal is not None:
        ctx.metrics.reject(refusal.reason)
        return refusal
    return StreamLease(limits, principal)
