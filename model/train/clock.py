"""The trainer's clock: seconds this process has run, leaving out the time it was stopped.

Training here is paused with SIGSTOP while benchmarks and tests need quiet cores (and a
suspended VM stops it the same way). A stopped process trains nothing, so stage times,
logged speeds and ETAs must not count the stop. A stop halts every thread, so a ticker
thread that asks to wake every ``tick`` seconds sees a stop as a wake-up far later than
asked: a delay over ``gap`` seconds counts as stopped time.
"""

from __future__ import annotations

import threading
import time


class RunningClock:
    """``now()``: a monotonic clock that does not advance while the process is stopped.

    ``stopped`` is the stopped time seen so far; a stop is counted once its ticker wakes,
    at most ``tick`` seconds after the process resumes.
    """

    def __init__(self, tick: float = 0.5, gap: float = 5.0) -> None:
        self.tick, self.gap = tick, gap
        self._stopped = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> RunningClock:
        """Start the ticker (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="clock", daemon=True)
                self._thread.start()
        return self

    def _watch(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            if now - last > self.gap:
                with self._lock:
                    self._stopped += now - last - self.tick
            last = now

    @property
    def stopped(self) -> float:
        with self._lock:
            return self._stopped

    def now(self) -> float:
        return time.monotonic() - self.stopped


_PROCESS_CLOCK = RunningClock()


def process_clock() -> RunningClock:
    """The one running clock of this process (started on first use)."""
    return _PROCESS_CLOCK.start()


class StageClock:
    """Wall seconds of a block and the part of them the process was stopped.

    ``with StageClock() as c: ...`` then ``c.elapsed`` (wall), ``c.stopped`` and
    ``c.seconds`` (elapsed less stopped: the time the block really ran).
    """

    def __init__(self, clock: RunningClock | None = None) -> None:
        self.clock = clock if clock is not None else process_clock()
        self.elapsed = 0.0
        self.stopped = 0.0

    def __enter__(self) -> StageClock:
        self.clock.start()
        self._start, self._stopped0 = time.monotonic(), self.clock.stopped
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self._start
        self.stopped = min(self.elapsed, self.clock.stopped - self._stopped0)

    @property
    def seconds(self) -> float:
        """The block's running time: elapsed less stopped."""
        return max(0.0, self.elapsed - self.stopped)
