"""The trainer's clock leaves out the time the process was stopped (model/train/clock.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from model.train.clock import process_clock
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


def test_stage_and_process_clocks_leave_out_the_time_the_process_was_stopped() -> None:
    """Training is paused with SIGSTOP while benchmarks need quiet cores: a stage's time,
    the logged speeds and the ETAs must not count the pause."""
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    time.sleep(0.3)
    child.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    child.send_signal(signal.SIGCONT)
    elapsed, stopped, seconds, running = map(float, child.stdout.readline().split())
    assert child.wait(timeout=30) == 0
    assert elapsed >= 4.7  # 2 s of steps + 3 s stopped
    assert 2.5 <= stopped <= 3.5
    assert 1.8 <= seconds <= 2.6
    assert 2.0 <= running <= 3.0  # the 2.3 s it ran, not the 5.3 s of wall time


def test_progress_bars_time_themselves_on_the_process_clock() -> None:
    bar = progress_bar(disable=True)
    assert bar.get_time == process_clock().now
