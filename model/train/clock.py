"""The trainer's clock: seconds this process has run, leaving out the time it was stopped.

Training here is paused with SIGSTOP while benchmarks and tests need quiet cores (and a
suspended VM stops it the same way). A stopped process trains nothing, so stage times,
logged speeds and ETAs must not count the stop. A stop halts every thread, so a ticker
thread that asks to wake every ``tick`` seconds sees a stop as a wake-up far later than
asked: a delay over ``gap`` seconds counts as stopped time. After SIGCONT every thread
wakes at once, and one that reads the clock may run before the ticker: each read catches
up first (the same rule, from the last time any thread looked), so no reader sees a stop
as running time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RunningClock:
    """``now()``: a monotonic clock that does not advance while the process is stopped.

    ``stopped`` is the stopped time seen so far, counted by the ticker or by the first read
    after the stop, whichever comes first. ``monotonic`` is the time source (tests).
    """

    def __init__(
        self, tick: float = 0.5, gap: float = 5.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.tick, self.gap, self._monotonic = tick, gap, monotonic
        self._stopped = 0.0
        self._last: float | None = None  # when a thread last looked (None: not started)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> RunningClock:
        """Start the ticker (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None:
                self._last = self._monotonic()
                self._thread = threading.Thread(target=self._watch, name="clock", daemon=True)
                self._thread.start()
        return self

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick)
            with self._lock:
                self._catch_up()

    def _catch_up(self) -> float:
        """Count a stop since the last look (the lock is held); return the time now."""
        now = self._monotonic()
        if self._last is not None:
            # The ticker looks every ``tick`` s: a longer silence than ``gap`` was a stop.
            if now - self._last > self.gap:
                self._stopped += now - self._last - self.tick
            self._last = now
        return now

    @property
    def stopped(self) -> float:
        with self._lock:
            self._catch_up()
            return self._stopped

    def now(self) -> float:
        with self._lock:
            return self._catch_up() - self._stopped

    def wall(self) -> float:
        """The time source's reading, stops included."""
        return self._monotonic()


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
        self._start, self._stopped0 = self.clock.wall(), self.clock.stopped
        return self

    def __exit__(self, *exc: object) -> None:
        stopped = self.clock.stopped - self._stopped0  # first: it counts a stop not yet seen
        self.elapsed = self.clock.wall() - self._start
        self.stopped = min(self.elapsed, stopped)

    def lap(self) -> tuple[float, float]:
        """``(seconds, stopped)`` since entering or the last lap, and start the next lap."""
        self.__exit__()
        self.__enter__()
        return self.seconds, self.stopped

    @property
    def seconds(self) -> float:
        """The block's running time: elapsed less stopped."""
        return max(0.0, self.elapsed - self.stopped)
