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
    from service.limits import (
        ConnectionLimits,
        connection_cap,
        guarded_protocol,
        raise_nofile_limit,
    )
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
        limits = ConnectionLimits()
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
    from service.auth import KeyFileError

    try:
        app = create_app(settings)
    except KeyFileError as exc:
        typer.echo(f"lass serve: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    # Connections are capped below the descriptors the process may open (service/limits.py);
    # uvicorn's limit_concurrency is not used: it counts idle connections too, so slow
    # clients filling it would have every real request answered 503.
    nofile = raise_nofile_limit()
    cap = connection_cap(limits.max_connections, nofile)
    if cap < limits.max_connections:
        logging.getLogger("lass.service").warning(
            "LASS_MAX_CONNECTIONS=%d lowered to %d: the process may open %d descriptors",
            limits.max_connections,
            cap,
            nofile,
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        http=guarded_protocol(limits, cap, app.state.ctx.metrics.reject),
        timeout_keep_alive=limits.keep_alive_s,
    )
    LassServer(config, app.state.ctx.streams, settings.stream_drain_s).run()


keys_app = typer.Typer(
    help="API keys for LASS_API_KEYS and LASS_API_KEYS_FILE (docs/api.md).",
    no_args_is_help=True,
)


@keys_app.command("new")
def new_key() -> None:
    """Print a new random key (256 bits, URL-safe): `lass keys new | tee key | lass keys hash`."""
    import secrets

    typer.echo(f"lass-{secrets.token_urlsafe(32)}")


@keys_app.command("hash")
def hash_key(
    key: str | None = typer.Argument(
        None,
        help="The key; read from standard input when left out, which keeps it out of the "
        "process list and the shell history.",
    ),
    admin: bool = typer.Option(False, "--admin", help="Give the key the admin scope."),
) -> None:
    """Print a keys-file line for KEY: its salted hash sha256:<salt>:<hex>, where <hex> is
    sha256(salt + key), then its scopes."""
    import sys

    from service.auth import KeyFileError, hash_key

    text = key if key is not None else sys.stdin.readline().strip()
    try:
        line = hash_key(text)
    except KeyFileError as exc:
        typer.echo(f"lass keys hash: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"{line} admin" if admin else line)


def register(app: typer.Typer) -> None:
    """Attach ``serve`` and ``keys`` to the root ``lass`` command."""
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
