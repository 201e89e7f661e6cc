"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from lass import __version__
from service.routers import health
from service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment."""
    settings = settings or Settings()
    app = FastAPI(title="lass", version=__version__)
    app.state.settings = settings
    app.include_router(health.router)
    return app
