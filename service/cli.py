"""``lass serve``: start the server under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def serve(
    host: str | None = typer.Option(None, help="Bind address (default: LASS_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default: LASS_PORT or 8000)."),
    bundle: Path | None = typer.Option(
        None, help="Bundle directory (default: LASS_BUNDLE or the packaged default bundle)."
    ),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: LASS_DEVICE)."),
    dtype: str | None = typer.Option(None, help="auto, fp32, fp16 or bf16 (default: LASS_DTYPE)."),
) -> None:
    """Start the transcription server."""
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.server import LassServer
    from service.settings import Settings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    for name, value in (("bundle", bundle), ("device", device), ("dtype", dtype)):
        if value is not None:
            overrides[name] = value
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            typer.echo(f"lass serve: LASS_{field.upper()}: {error['msg']}", err=True)
        raise typer.Exit(code=2) from exc
    if not (settings.bundle / "manifest.json").is_file() and "bundle" in settings.model_fields_set:
        typer.echo(
            f"lass serve: no lass bundle at {settings.bundle} (no manifest.json); set "
            "LASS_BUNDLE (or --bundle) to a bundle directory written by `lass train export`",
            err=True,
        )
        raise typer.Exit(code=1)
    # lass's own loggers (engine, batcher, worker) next to uvicorn's.
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    LassServer(config, app.state.ctx.streams, settings.stream_drain_s).run()


def register(app: typer.Typer) -> None:
    """Attach ``serve`` to the root ``lass`` command."""
    app.command("serve")(serve)
