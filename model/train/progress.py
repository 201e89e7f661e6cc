"""The progress bar of every trainer stage: description, bar, done/total, elapsed, ETA.

One definition for the training loops (steps), the synthetic corpus (seconds of audio),
the n-gram LMs (sentences) and the evaluator (seconds of audio). It draws on stderr, so a
stage's result on stdout stays clean; ``disable`` (``--quiet``, ranks other than 0) turns
it off. Without a terminal it prints its final state once, when the stage ends.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from model.train.clock import process_clock

# Without a terminal (a run's log file) rich assumes 80 columns and cuts the counts and the
# info short ("20000/16561…"); a log line may be as long as it needs.
LOG_WIDTH = 200


def progress_bar(disable: bool) -> Progress:
    """A rich ``Progress``; every task needs an ``info`` field (free text after the ETA)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=LOG_WIDTH)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
        refresh_per_second=2,
        get_time=process_clock().now,  # elapsed and ETA leave out time the process was stopped
    )
