"""Dynamic batcher: an async queue of work items turned into batches (pure asyncio, no torch).

A work item is one utterance or one piece of a long one, with its language (``group``) and
the request (``flow``) it belongs to. What runs next is decided by :func:`plan`, a pure
function of (pending items, policy, now), so the policy reads and tests without a loop.

- **Fair between requests.** Start-time fair queueing over requests: each item gets a start
  tag ``max(virtual time, finish tag of its request's previous item)`` and costs its
  length, and the batch is anchored on the lowest tag. A request of 58 pieces therefore
  takes turns with a 4-s clip that arrives after it instead of holding it behind all 58;
  a request that keeps arriving cannot starve the others either (virtual time advances).
- **Batches** are formed when the worker is free and either enough compatible items are
  pending or the oldest has waited ``max_wait_s``; the anchor's batch is filled with the
  pending items whose lengths are closest to it (less padding) while it stays within
  ``max_batch_size`` and the padded-samples budget. ``mixed``: any languages share a batch
  (each sample runs through its own sub-network), preferring the languages with the most
  pending items (``language_affinity``: fewer, larger language groups); ``language``: one
  language per batch; ``max_batch_size=1``: no batching. Items of different ``kind``
  (``"asr"``, ``"lid"``) never share a batch.
- **Bounded in count and in time.** At most ``max_queue_size`` items wait
  (:class:`QueueFullError`). A request whose first item has not started within
  ``max_queue_wait_s`` fails with :class:`QueueTimeoutError` (Triton's queue policy with
  the REJECT action), and one whose estimated wait (the work fairly ahead of it over the
  measured throughput) is already past that bound is refused at once, so under overload
  the accepted requests keep a bounded latency and the rest are told to retry at once.
  Items carry a deadline (:class:`DeadlineExceededError`) and cancelled items (client gone)
  are dropped unrun.

- **Runners.** Up to ``runners`` batches run at once (the engine's model threads; one on
  a GPU, more on a CPU where two threads of one core each beat one thread of two:
  docs/benchmarks.md). :meth:`Batcher.exclusive` stops new batches and waits for the
  running ones, so a change to the model (a language added or removed) happens between
  batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("lass.batcher")

BatchMode = Literal["mixed", "language"]


class OverloadedError(Exception):
    """The server has more work than it can start soon: retry later."""


class QueueFullError(OverloadedError):
    """The bounded queue holds ``max_queue_size`` items already, or the estimated wait of
    a new request is past ``max_queue_wait_s``."""


class QueueTimeoutError(OverloadedError):
    """The request waited ``max_queue_wait_s`` in the queue without starting."""


class DeadlineExceededError(Exception):
    """The item's deadline passed before it ran."""


class ShuttingDownError(Exception):
    """The batcher no longer accepts work."""


@dataclass(frozen=True)
class BatchPolicy:
    """How batches are formed."""

    mode: BatchMode = "mixed"
    max_batch_size: int = 16
    max_batch_samples: int = 160 * 16_000  # padded samples per batch: B * longest item
    max_wait_s: float = 0.01
    max_queue_size: int = 256
    # A request's first item must start within this many seconds (0 = no bound).
    max_queue_wait_s: float = 0.0
    # mixed mode: among items of similar length (same bucket), prefer the languages with
    # the most pending items, so a batch holds fewer, larger language groups.
    language_affinity: bool = True
    length_bucket_samples: int = 16_000

    def __post_init__(self) -> None:
        if self.mode not in ("mixed", "language"):
            raise ValueError(f"mode must be 'mixed' or 'language', not {self.mode!r}")
        if self.max_batch_size < 1 or self.max_batch_samples < 1 or self.max_queue_size < 1:
            raise ValueError("max_batch_size, max_batch_samples, max_queue_size must be >= 1")
        if self.max_wait_s < 0 or self.max_queue_wait_s < 0:
            raise ValueError("max_wait_s and max_queue_wait_s must be >= 0")


# The ways a batch policy can run pending work, in the order preferred on a tie: mixed
# batches (one forward for any languages), one-language batches, no batching.
WAYS = ("mixed", "language", "none")


def fastest_way(
    seconds: Mapping[str, float],
    items: int = 1,
    mixed_gain: float = 1.5,
    min_batching_gain: float = 1.05,
    long_item_s: float = 0.1,
    long_batching_gain: float = 1.15,
) -> str:
    """The way (of :data:`WAYS`) to serve with, from the seconds each took on the same
    ``items`` clips.

    In a server a big batch costs what an in-process timing does not see: every request
    waits for its whole batch and the results come back in bursts that leave the model
    idle until clients return, while HTTP and decoding share the cores. A mixed batch is
    the biggest (any languages join it) and runs one small matmul per language group. So:

    - the batched way is ``language`` unless ``mixed`` ran the work at least
      ``mixed_gain`` times faster (a GPU, where one launch for every language pays);
    - it is used only when it ran the work at least ``min_batching_gain`` times faster
      than one item at a time (``none``), or ``long_batching_gain`` times when one item
      alone took ``long_item_s`` or more: the longer an item's forward, the longer a batch
      holds its requests and the less per-call overhead there is to save.

    Measured on the quiet 2-core CPU (docs/benchmarks.md), two model threads: the default
    bundle (0.03 s a clip) batched 1.07-1.12x faster at warm-up and served language
    batches 1.01-1.05x faster than none; ``base`` (0.26 s a clip) batched 1.08x faster at
    warm-up but served them 0.95x as fast as none. One model thread (earlier): the default
    bundle 1.16x at warm-up, served 1.37x; ``base`` (0.17 s a clip) 1.16x, served 1.12x.
    """
    timed = {way: seconds[way] for way in WAYS if way in seconds}
    if not timed:
        raise ValueError("no timings of mixed, language or none")
    if "mixed" in timed and "language" in timed:
        batched = "mixed" if timed["mixed"] * mixed_gain <= timed["language"] else "language"
    elif "mixed" in timed or "language" in timed:
        batched = "mixed" if "mixed" in timed else "language"
    else:
        return "none"
    if "none" in timed:
        long_items = timed["none"] / max(1, items) >= long_item_s
        needed = long_batching_gain if long_items else min_batching_gain
        if timed["none"] < timed[batched] * needed:
            return "none"
    return batched


def policy_for_way(policy: BatchPolicy, way: str) -> BatchPolicy:
    """``policy`` running pending work ``way``: ``none`` is one-language batches of one."""
    if way == "none":
        return dataclasses.replace(policy, mode="language", max_batch_size=1)
    if way not in ("mixed", "language"):
        raise ValueError(f"unknown way {way!r}")
    return dataclasses.replace(policy, mode=way)  # type: ignore[arg-type]


@dataclass(eq=False)
class WorkItem:
    """One unit of model work: an utterance or a piece of one.

    ``payload`` is opaque to the batcher (the engine puts the samples there);
    ``num_samples`` is the item's length, used for grouping, the padding budget and the
    fair share. ``flow`` names the request it belongs to (items of one flow take turns
    with other flows'; empty = a flow of its own).
    """

    payload: Any
    num_samples: int
    group: str
    kind: str = "asr"
    deadline: float = math.inf
    flow: str = ""
    # Set by Batcher.submit.
    enqueued_at: float = 0.0
    queue_deadline: float = math.inf
    start_tag: float = 0.0
    future: asyncio.Future[Any] = field(init=False, repr=False)


@dataclass
class Batch:
    """Items that run through the model together."""

    id: int
    items: list[WorkItem]
    kind: str
    created_at: float

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def max_samples(self) -> int:
        return max(item.num_samples for item in self.items)

    @property
    def padded_samples(self) -> int:
        return self.size * self.max_samples

    @property
    def padding_fraction(self) -> float:
        """Share of the padded batch that is padding, in [0, 1)."""
        real = sum(item.num_samples for item in self.items)
        return 1.0 - real / max(self.padded_samples, 1)

    @property
    def groups(self) -> list[str]:
        return sorted({item.group for item in self.items})


# ------------------------------------------------------------------ the policy, pure
@dataclass(frozen=True)
class Plan:
    """What the scheduler does next (:func:`plan`'s answer)."""

    batch: tuple[WorkItem, ...] = ()  # run these now, in queue order (empty: not yet)
    expired: tuple[WorkItem, ...] = ()  # past their deadline: DeadlineExceededError
    overdue: tuple[WorkItem, ...] = ()  # waited past max_queue_wait_s: QueueTimeoutError
    wait_s: float = math.inf  # no batch: look again after this long (or on a new item)


def _compatible(policy: BatchPolicy, anchor: WorkItem, item: WorkItem) -> bool:
    if item.kind != anchor.kind:
        return False
    return policy.mode == "mixed" or item.group == anchor.group


def _fair_key(item: WorkItem) -> tuple[float, float]:
    return (item.start_tag, item.enqueued_at)


def _is_full(policy: BatchPolicy, anchor: WorkItem, live: Sequence[WorkItem]) -> bool:
    """Whether the compatible pending items already fill a batch (no reason to wait)."""
    candidates = [it for it in live if _compatible(policy, anchor, it)]
    if len(candidates) >= policy.max_batch_size:
        return True
    longest = max(it.num_samples for it in candidates)
    return len(candidates) * longest >= policy.max_batch_samples


def fill_batch(policy: BatchPolicy, anchor: WorkItem, others: Sequence[WorkItem]) -> list[WorkItem]:
    """``anchor`` plus the compatible ``others`` that fit with it, in queue order: lengths
    closest to the anchor's first (less padding), then (mixed, ``language_affinity``) the
    languages with the most pending items, then the fair order."""
    compatible = [it for it in others if it is not anchor and _compatible(policy, anchor, it)]
    bucket = max(1, policy.length_bucket_samples)
    rank: dict[str, int] = {anchor.group: 0}
    if policy.language_affinity:
        # Fewer, larger language groups inside the batch: the masked layers run fewer,
        # larger matmuls. The fair order breaks ties.
        counts: dict[str, int] = {}
        for it in compatible:
            counts[it.group] = counts.get(it.group, 0) + 1
        for group in sorted(counts, key=lambda g: -counts[g]):
            rank.setdefault(group, len(rank))
    candidates = sorted(
        compatible,
        key=lambda it: (
            abs(it.num_samples - anchor.num_samples) // bucket,  # similar lengths first
            rank.get(it.group, 0),
            _fair_key(it),
        ),
    )
    chosen = [anchor]
    longest = anchor.num_samples
    for item in candidates:
        if len(chosen) >= policy.max_batch_size:
            break
        new_longest = max(longest, item.num_samples)
        if (len(chosen) + 1) * new_longest > policy.max_batch_samples:
            continue  # a shorter one further down may still fit
        chosen.append(item)
        longest = new_longest
    # Queue order, so results are easy to follow in logs.
    chosen.sort(key=lambda it: it.enqueued_at)
    return chosen


def plan(
    pending: Sequence[WorkItem], policy: BatchPolicy, now: float, *, flush: bool = False
) -> Plan:
    """The scheduler's next step for the live (not cancelled) ``pending`` items at ``now``.

    Items past their deadline or their queue-wait bound are returned to be failed. Of the
    rest, the one with the lowest fair start tag anchors the batch; the batch is formed at
    once when it is full, when the oldest item has waited ``max_wait_s``, or with
    ``flush`` (draining), else ``wait_s`` says how long to wait for more items.
    """
    expired = tuple(it for it in pending if now > it.deadline)
    overdue = tuple(it for it in pending if it.deadline >= now > it.queue_deadline)
    live = [it for it in pending if now <= it.deadline and now <= it.queue_deadline]
    if not live:
        return Plan(expired=expired, overdue=overdue)
    anchor = min(live, key=_fair_key)
    oldest = min(it.enqueued_at for it in live)
    wait_left = oldest + policy.max_wait_s - now
    if wait_left > 0 and not flush and not _is_full(policy, anchor, live):
        return Plan(expired=expired, overdue=overdue, wait_s=wait_left)
    return Plan(tuple(fill_batch(policy, anchor, live)), expired, overdue)


Runner = Callable[[Batch], Awaitable[None]]
BatchHook = Callable[[Batch], None]


class Batcher:
    """Queue + scheduler loop feeding ``runner`` up to ``runners`` batches at a time
    (:func:`plan` decides what runs next whenever a runner is free).

    ``runner(batch)`` must settle every item's future (result or exception); if it raises,
    the batcher fails the items it left unsettled with that exception.
    """

    def __init__(
        self,
        policy: BatchPolicy,
        runner: Runner,
        *,
        runners: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchHook | None = None,
    ) -> None:
        if runners < 1:
            raise ValueError(f"runners must be >= 1, got {runners}")
        self.policy = policy
        self.runners = runners
        self._runner = runner
        self._clock = clock
        self._on_batch = on_batch
        self._pending: list[WorkItem] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._exclusive = 0  # holders of exclusive(): no batch starts meanwhile
        self._closed = False
        self._ids = itertools.count(1)
        self._flows = itertools.count(1)
        # Start-time fair queueing: virtual time (the start tag of the last anchor) and
        # the finish tag of each request's last queued item, in samples.
        self._vtime = 0.0
        self._finish: dict[str, float] = {}
        # Measured throughput (samples per second of runner time), for the wait estimate.
        self._rate: float | None = None
        self._batches_run = 0
        self.expired = 0
        self.overdue = 0

    # --- public API -------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Pending (not yet scheduled) items."""
        return len(self._pending)

    @property
    def accepting(self) -> bool:
        return not self._closed

    @property
    def running(self) -> int:
        """Batches running now."""
        return len(self._running)

    @property
    def throughput(self) -> float | None:
        """Samples per second with every runner busy (a moving average), once measured."""
        return None if self._rate is None else self._rate * self.runners

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def submit(self, item: WorkItem) -> asyncio.Future[Any]:
        """Queue ``item``; returns the future its result lands in (see :meth:`submit_all`)."""
        return self.submit_all([item])[0]

    def submit_all(self, items: Sequence[WorkItem]) -> list[asyncio.Future[Any]]:
        """Queue ``items`` (one request's) all or none; returns their futures.

        Raises :class:`QueueFullError` (no room, or the estimated wait is past
        ``max_queue_wait_s``) or :class:`ShuttingDownError` at once instead of queueing.
        """
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        if len(self._pending) + len(items) > self.policy.max_queue_size:
            raise QueueFullError(f"queue holds {len(self._pending)} items")
        now = self._clock()
        loop = asyncio.get_running_loop()
        tags: list[float] = []
        finish: dict[str, float] = {}
        for item in items:
            flow = item.flow or f"#{next(self._flows)}"
            start = max(self._vtime, finish.get(flow, self._finish.get(flow, 0.0)))
            tags.append(start)
            finish[flow] = start + item.num_samples
        # Only the first item's wait is bounded: the later ones wait behind their own
        # request's earlier pieces once it has started (its deadline bounds those).
        bound = self.policy.max_queue_wait_s
        if bound > 0 and items:
            wait = self.estimated_wait(tags[0])
            if wait is not None and wait > bound:
                raise QueueFullError(
                    f"the work ahead would take about {wait:.1f} s to start this request "
                    f"(bound: {bound:g} s)"
                )
        self._finish.update(finish)
        for k, (item, tag) in enumerate(zip(items, tags, strict=True)):
            item.enqueued_at = now
            item.start_tag = tag
            item.queue_deadline = now + bound if bound > 0 and k == 0 else math.inf
            item.future = loop.create_future()
            self._pending.append(item)
        self._idle.clear()
        self._wake.set()
        return [item.future for item in items]

    def estimated_wait(self, start_tag: float) -> float | None:
        """Seconds until an item with ``start_tag`` would start: the pending work fairly
        ahead of it over the measured throughput (None until a few batches have run)."""
        rate = self.throughput
        if rate is None or self._batches_run < 3:
            return None
        ahead = sum(it.num_samples for it in self._pending if it.start_tag <= start_tag)
        return ahead / rate

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """No batch runs inside: new ones wait, running ones are finished first."""
        self._exclusive += 1
        try:
            while self._running:
                await asyncio.wait(set(self._running))
            yield
        finally:
            self._exclusive -= 1
            self._wake.set()

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting; with ``drain`` finish what is queued first, else fail it."""
        self._closed = True
        if drain and self._task is not None and not self._task.done():
            self._wake.set()
            await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running))
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ShuttingDownError("the server is shutting down"))
        self._pending.clear()
        self._idle.set()

    # --- scheduling -------------------------------------------------------------
    def _settle(self, step: Plan) -> None:
        """Fail the items ``step`` gave up on and take them off the queue."""
        for item in step.expired:
            self.expired += 1
            item.future.set_exception(DeadlineExceededError("request timed out in the queue"))
        for item in step.overdue:
            self.overdue += 1
            item.future.set_exception(
                QueueTimeoutError(
                    f"the request waited {self.policy.max_queue_wait_s:g} s without starting"
                )
            )
        gone = {id(it) for it in (*step.expired, *step.overdue, *step.batch)}
        self._pending = [it for it in self._pending if id(it) not in gone]

    def _advance(self, anchor_tag: float) -> None:
        self._vtime = max(self._vtime, anchor_tag)
        if len(self._finish) > 2 * len(self._pending) + 64:
            # Flows whose last finish is behind virtual time start afresh anyway.
            self._finish = {f: t for f, t in self._finish.items() if t > self._vtime}

    def _measure(self, batch: Batch, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = sum(it.num_samples for it in batch.items) / seconds
        self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
        self._batches_run += 1

    async def _loop(self) -> None:
        while True:
            self._pending = [it for it in self._pending if not it.future.done()]
            if self._exclusive or len(self._running) >= self.runners:
                self._wake.clear()  # a finished batch or the end of exclusive() wakes us
                await self._wake.wait()
                continue
            step = plan(self._pending, self.policy, self._clock(), flush=self._closed)
            self._settle(step)
            if not step.batch:
                if not self._pending and not self._running:
                    self._idle.set()
                self._wake.clear()
                if math.isinf(step.wait_s):
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(step.wait_s):
                            await self._wake.wait()
                continue
            batch = Batch(next(self._ids), list(step.batch), step.batch[0].kind, self._clock())
            self._advance(min(it.start_tag for it in batch.items))
            if self._on_batch is not None:
                try:
                    self._on_batch(batch)
                except Exception:  # a broken hook must not stop serving
                    log.exception("batch hook failed")
            task = asyncio.get_running_loop().create_task(
                self._run(batch), name=f"batch-{batch.id}"
            )
            self._running.add(task)
            task.add_done_callback(self._finished)

    async def _run(self, batch: Batch) -> None:
        started = time.perf_counter()
        try:
            await self._runner(batch)
        except asyncio.CancelledError:  # stop() without draining
            for item in batch.items:
                if not item.future.done():
                    item.future.set_exception(ShuttingDownError("the server is shutting down"))
            raise
        except Exception as exc:
            log.exception("batch %d failed", batch.id)
            for item in batch.items:
                if not item.future.done():
                    item.future.set_exception(exc)
        self._measure(batch, time.perf_counter() - started)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()
