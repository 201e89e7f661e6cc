"""``lass train``: the trainer's stages."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)


@app.callback()
def train(ctx: typer.Context) -> None:
    """Run a training stage."""
    if ctx.invoked_subcommand is None:
        typer.echo("lass train: no training stages are available yet.", err=True)
        raise typer.Exit(code=2)
