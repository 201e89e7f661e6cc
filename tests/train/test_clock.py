"""The trainer's clock leaves out the time the process was stopped (model/train/clock.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.train.clock import RunningClock, StageClock, process_clock
from model.train.progress import progress_bar
from tests.conftest import REPO

# 2 s of "work" in steps, as training does, with the stage and the clock timed together.
SCRIPT = """
import time
from model.train.clock import RunningClock, StageClock
clock = RunningClock(tick=0.1, gap=1.0).start()
t0 = clock.now()
with StageClock(clock) as stage:
    print('started', flush=True)
    for _ in range(20):
        time.sleep(0.1)
time.sleep(0.3)  # the ticker has counted any stop by now
print(round(stage.elapsed, 2), round(stage.stopped, 2), round(stage.seconds, 2),
      round(clock.now() - t0, 2))
"""


def _stopped_child(args: list[str], after: float) -> subprocess.Popen[str]:
    """``python -c args...``, stopped with SIGSTOP for 3 s ``after`` s past its 'started'
    line, then continued: a pause as training here is paused."""
    child = subprocess.Popen(
        [sys.executable, "-c", *args], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    time.sleep(after)
    child.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    child.send_signal(signal.SIGCONT)
    return child


def test_stage_and_process_clocks_leave_out_the_time_the_process_was_stopped() -> None:
    """Training is paused with SIGSTOP while benchmarks need quiet cores: a stage's time,
    the logged speeds and the ETAs must not count the pause."""
    child = _stopped_child([SCRIPT], after=0.3)
    assert child.stdout is not None
    elapsed, stopped, seconds, running = map(float, child.stdout.readline().split())
    assert child.wait(timeout=30) == 0
    assert elapsed >= 4.7  # 2 s of steps + 3 s stopped
    assert 2.5 <= stopped <= 3.5
    assert 1.8 <= seconds <= 2.6
    assert 2.0 <= running <= 3.0  # the 2.3 s it ran, not the 5.3 s of wall time


def test_progress_bars_time_themselves_on_the_process_clock() -> None:
    bar = progress_bar(disable=True)
    assert bar.get_time == process_clock().now


def test_a_read_right_after_a_stop_counts_it_before_the_ticker_wakes() -> None:
    """After SIGCONT every thread wakes at once, and the one that writes a stage's time may
    read the clock before the ticker has seen the stop: the read counts it itself."""
    t = [1000.0]
    clock = RunningClock(tick=0.5, gap=5.0, monotonic=lambda: t[0]).start()
    t[0] += 2.0  # ran 2 s (within the gap: no stop)
    assert clock.now() == pytest.approx(1002.0)
    with StageClock(clock) as stage:
        t[0] += 1.0
        clock.now()  # the ticker looks while the process runs
        t[0] += 60.5  # stopped for 60 s; the ticker would have looked 0.5 s in
    assert stage.stopped == pytest.approx(60.0) and stage.seconds == pytest.approx(1.5)
    assert clock.now() == pytest.approx(1003.5)


TIMER_SCRIPT = """
import sys, time
from pathlib import Path
from model.train.clock import RunningClock
from model.train.compare import StageTimer
clock = RunningClock(tick=0.1, gap=1.0).start()
with StageTimer(Path(sys.argv[1]), "finetune", every=0.2, clock=clock):
    print('started', flush=True)
    for _ in range(20):
        time.sleep(0.1)
"""


def test_a_stage_timer_leaves_out_a_stop_its_heartbeat_wakes_from(tmp_path: Path) -> None:
    """The comparison's stage times are written every ``every`` seconds by a thread that
    wakes from a stop together with the clock's ticker: the stop is still left out."""
    child = _stopped_child([TIMER_SCRIPT, str(tmp_path)], after=0.5)
    assert child.wait(timeout=30) == 0
    timing = json.loads((tmp_path / "timing.json").read_text())
    stopped = json.loads((tmp_path / "stopped.json").read_text())
    assert 1.8 <= timing["finetune"] <= 2.8  # the 2 s of steps, not the 5 s of wall time
    assert 2.4 <= stopped["finetune"] <= 3.5
