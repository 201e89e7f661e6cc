"""What routers get injected (FastAPI ``Depends``): settings, engine and metrics of one app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from service.settings import Settings

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import ServiceMetrics


@dataclass
class AppContext:
    """Everything one app instance owns; no module-level globals."""

    settings: Settings
    engine: Engine
    metrics: ServiceMetrics


def get_context(request: Request) -> AppContext:
    """FastAPI dependency: the app's context."""
    ctx: AppContext = request.app.state.ctx
    return ctx
