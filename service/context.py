"""What routers get injected (FastAPI ``Depends``): settings, engine and metrics of one app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from service.settings import Settings

if TYPE_CHECKING:
    from service.auth import KeyStore
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.ratelimit import RateLimiter
    from service.streaming.channel import StreamRegistry


def _no_keys() -> KeyStore:
    from service.auth import KeyStore  # service.auth imports this module

    return KeyStore()


def _no_limits() -> RateLimiter:
    from service.ratelimit import RateLimiter

    return RateLimiter()


@dataclass
class AppContext:
    """Everything one app instance owns; no module-level globals."""

    settings: Settings
    engine: Engine
    metrics: ServiceMetrics
    streams: StreamRegistry
    # API keys and per-caller limits (service/auth.py, service/ratelimit.py); the
    # defaults check no key and limit nothing.
    keys: KeyStore = field(default_factory=_no_keys)
    limits: RateLimiter = field(default_factory=_no_limits)


def get_context(connection: HTTPConnection) -> AppContext:
    """FastAPI dependency (HTTP and WebSocket routes alike): the app's context."""
    ctx: AppContext = connection.app.state.ctx
    return ctx
