"""The ``lass`` command line: ``lass serve``, ``lass train <stage>``, ``lass bench <name>``.

Each group lives beside the code it drives (``service/cli.py``, ``model/train/cli.py``,
``bench/cli.py``); this module only assembles them, so ``lass --help`` imports no torch.
"""

from __future__ import annotations

import typer

from lass import __version__

app = typer.Typer(
    name="lass",
    help="lass: multilingual speech recognition with language-adaptive sparse sub-networks.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lass {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """lass: multilingual speech recognition with language-adaptive sparse sub-networks."""


def _register() -> None:
    from bench.cli import app as bench_app
    from lass.client import register as register_client
    from model.train.cli import app as train_app
    from service.cli import register as register_serve

    register_serve(app)
    register_client(app)
    app.add_typer(
        train_app, name="train", help="Offline trainer: corpus to bundle, stage by stage."
    )
    app.add_typer(bench_app, name="bench", help="Benchmarks (figures go to docs/benchmarks.md).")


_register()
