"""``lass bench <name> [args]``: runs a benchmark module's ``main(argv)`` with the rest of the line.

Each benchmark is a plain module with an argparse ``main``; it also runs as
``python -m bench.<module>``. Modules are imported only when their command runs,
so ``lass --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import typer

# command name -> module under bench/
BENCHMARKS: dict[str, str] = {
    "masked-forward": "bench.masked_forward",
    "train-step": "bench.train_step",
    "service": "bench.service",
    "decoding": "bench.decoding",
    "audio-io": "bench.audio_io",
    "audio-skew": "bench.audio_skew",
    "vad": "bench.vad",
    "lid": "bench.lid_cost",
    "stream": "bench.stream",
}

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)


@app.callback()
def bench(ctx: typer.Context) -> None:
    """Run a benchmark: lass bench NAME --help for its options."""
    if ctx.invoked_subcommand is None:
        typer.echo(f"lass bench: name one of {', '.join(BENCHMARKS)}.", err=True)
        raise typer.Exit(code=2)


def _runner(module_name: str) -> Callable[[typer.Context], None]:
    def run(ctx: typer.Context) -> None:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            typer.echo(f"lass bench: {module_name} is not available yet.", err=True)
            raise typer.Exit(code=2) from exc
        code = module.main(list(ctx.args))
        raise typer.Exit(code=int(code or 0))

    return run


for _name, _module in BENCHMARKS.items():
    app.command(
        _name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        help=f"Run {_module} (pass --help for its options).",
        add_help_option=False,
    )(_runner(_module))
