"""The FastAPI application factory.

``create_app(settings)`` builds one self-contained app: its own engine (model worker +
batcher), metrics registry and routers; nothing lives in module globals, so tests can make
several. The lifespan checks the bundle path (a missing bundle stops startup with a message
naming LASS_BUNDLE), starts the scheduler and loads the model in the background (liveness
answers meanwhile; readiness turns 200 after the warm-up batch) and on shutdown, which
uvicorn starts on SIGTERM after it stopped accepting and finished in-flight requests,
drains the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lass import __version__
from service.audio import AudioError, BodySizeLimitMiddleware
from service.context import AppContext
from service.engine import Engine
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.routers import (
    health,
    languages,
    metrics,
    models,
    realtime,
    stream,
    transcriptions,
    web,
)
from service.settings import Settings
from service.streaming.channel import StreamRegistry

log = logging.getLogger("lass.service")


class RequestMetricsMiddleware:
    """Counts requests by route template and status, and times them (pure ASGI)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            if endpoint != "/metrics":
                self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment."""
    settings = settings or Settings()
    service_metrics = ServiceMetrics()
    engine = Engine(settings, service_metrics)
    ctx = AppContext(settings, engine, service_metrics, StreamRegistry(settings.max_streams))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            log.info("shutting down: draining %d queued items", engine.batcher.depth)
            await engine.stop()

    app = FastAPI(title="lass", version=__version__, lifespan=lifespan)
    app.state.ctx = ctx
    app.state.settings = settings
    install_error_handlers(app)
    for module in (health, transcriptions, models, languages, metrics, stream, realtime, web):
        app.include_router(module.router)

    def on_too_large(exc: AudioError) -> None:
        service_metrics.reject(exc.code)

    # Outermost last: metrics see the 413s the size guard answers.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        paths=(transcriptions.PATH,),
        on_reject=on_too_large,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    return app
