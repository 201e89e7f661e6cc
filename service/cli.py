"""``lass serve``: start the server under uvicorn."""

from __future__ import annotations

import logging

import typer


def serve(
    host: str | None = typer.Option(None, help="Bind address (default: LASS_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default: LASS_PORT or 8000)."),
) -> None:
    """Start the transcription server."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    # lass's own loggers (engine, batcher, worker) next to uvicorn's.
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


def register(app: typer.Typer) -> None:
    """Attach ``serve`` to the root ``lass`` command."""
    app.command("serve")(serve)
