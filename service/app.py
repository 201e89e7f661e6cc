"""The FastAPI application factory.

``create_app(settings)`` builds one self-contained app: its own engine (model worker +
batcher), metrics registry and routers; nothing lives in module globals, so tests can make
several. The lifespan checks the bundle path (a missing bundle stops startup with a message
naming LASS_BUNDLE), starts the scheduler and loads the model in the background (liveness
answers meanwhile; readiness turns 200 after the warm-up batch) and on shutdown, which
uvicorn starts on SIGTERM after it stopped accepting and finished in-flight requests,
drains the queue.

Access (docs/api.md, "Keys, limits and CORS"): the API routers depend on
``service.auth.authorize`` (key, then the caller's request bucket); the health routes, the
page and its assets stay open, ``/metrics`` too unless ``LASS_METRICS_REQUIRE_KEY``;
streams check the same at accept (``service.streaming.channel.serve_stream``). CORS is
off unless ``LASS_CORS_ORIGINS`` names origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import start_http_server
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lass import __version__
from model.audio import AudioError
from service.audio import BodySizeLimitMiddleware
from service.auth import KeyStore, authorize, install_log_redaction
from service.context import AppContext
from service.engine import Engine
from service.errors import install_error_handlers
from service.limits import BodyTimeoutMiddleware, ConnectionLimits
from service.metrics import ServiceMetrics
from service.ratelimit import RateLimiter
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


# Headers a browser page on an allowed origin may read from our answers (beyond the
# CORS-safelisted ones): how long to wait after a 429 or 503, and lass's own.
CORS_EXPOSED = ("Retry-After", "Server-Timing", "X-Lass-Language", "X-Lass-Batches")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment. A keys file that cannot be
    read or parsed raises ``service.auth.KeyFileError``."""
    settings = settings or Settings()
    service_metrics = ServiceMetrics()
    engine = Engine(settings, service_metrics)
    keys = KeyStore(settings.api_keys.get_secret_value(), settings.api_keys_file)
    ctx = AppContext(
        settings,
        engine,
        service_metrics,
        StreamRegistry(settings.max_streams),
        keys=keys,
        limits=RateLimiter.from_settings(settings),
    )
    # Read at scrape time, so the separate metrics port shows it too.
    service_metrics.track_queue_depth(lambda: engine.batcher.depth)
    if not keys.enabled and not is_loopback(settings.host):
        log.warning(
            "LASS_HOST=%s is not a loopback address and no API keys are set "
            "(LASS_API_KEYS, LASS_API_KEYS_FILE): anyone who can reach this port can "
            "transcribe, open streams and use admin routes",
            settings.host,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Here, not earlier: uvicorn configures its loggers after create_app.
        install_log_redaction()
        loop = asyncio.get_running_loop()
        hup = False
        if keys.path is not None:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                # Not in the main thread (an in-process test client) there is no signal.
                loop.add_signal_handler(signal.SIGHUP, keys.reload, "SIGHUP")
                hup = True
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server, _thread = start_http_server(
                settings.metrics_port, addr=settings.host, registry=service_metrics.registry
            )
            log.info("metrics also on http://%s:%d/metrics", settings.host, settings.metrics_port)
        await engine.start()
        try:
            yield
        finally:
            log.info("shutting down: draining %d queued items", engine.batcher.depth)
            await engine.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)

    app = FastAPI(title="lass", version=__version__, lifespan=lifespan)
    app.state.ctx = ctx
    app.state.settings = settings
    install_error_handlers(app)
    # Open: health checks, the page and its assets (it asks the user for a key), and the
    # streams, which check keys and limits themselves once accepted (to answer with an
    # error event a browser can read).
    for module in (health, stream, realtime, web):
        app.include_router(module.router)
    guarded = [Depends(authorize)]
    for module in (transcriptions, models, languages):
        app.include_router(module.router, dependencies=guarded)
    app.include_router(metrics.router, dependencies=guarded if settings.metrics_require_key else [])

    def on_too_large(exc: AudioError) -> None:
        service_metrics.reject(exc.code)

    # Outermost last: metrics see the 413s the size guard and the 408s the body timeout
    # answers.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        paths=(transcriptions.PATH,),
        on_reject=on_too_large,
    )
    limits = ConnectionLimits()
    app.add_middleware(
        BodyTimeoutMiddleware,
        timeout_s=limits.body_timeout_s,
        min_rate=limits.body_min_rate,
        on_reject=service_metrics.reject,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Outermost: preflights are answered before any key check (browsers send them
        # without credentials), and 401/429 answers carry the headers a page needs to
        # read them. Keys travel in headers, never cookies: no credentials mode.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            # Any request header: the openai package in a browser adds its own x-stainless-*.
            allow_headers=["*"],
            expose_headers=CORS_EXPOSED,
            max_age=600,
        )
    return app
