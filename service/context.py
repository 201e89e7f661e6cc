"""What routers get injected (FastAPI ``Depends``): settings, engine and metrics of one app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from service.settings import Settings

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import ServiceMetrics
    from service.streaming.channel import StreamRegistry


@dataclass
class AppContext:
    """Everything one app instance owns; no module-level globals."""

    settings: Settings
    engine: Engine
    metrics: ServiceMetrics
    streams: StreamRegistry


def get_context(connection: HTTPConnection) -> AppContext:
    """FastAPI dependency (HTTP and WebSocket routes alike): the app's context."""
    ctx: AppContext = connection.app.state.ctx
    return ctx
