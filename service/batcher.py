"""Dynamic batcher: an async queue of work items turned into batches (pure asyncio, no torch).

A work item is one utterance or one chunk of a long one, with its language (``group``).
The scheduler loop forms a batch when the worker is free and either enough compatible
items are pending or the oldest has waited ``max_wait_s``. A batch is anchored on the
oldest pending item (first come, first served) and filled with the pending items whose
lengths are closest to it (less padding) while it stays within ``max_batch_size`` and the
padded-samples budget. Policies:

- ``mixed``: items of any languages share a batch (the model runs each sample through its
  own language's sub-network); among items of similar length it prefers the languages with
  the most pending items (``language_affinity``), so the batch holds fewer, larger
  language groups: the masked layers run one matmul per language group;
- ``language``: a batch holds one language only;
- ``max_batch_size=1``: no batching.

Items of different ``kind`` (``"asr"``, ``"lid"``) never share a batch. The queue is
bounded (:class:`QueueFullError`), items carry a deadline (:class:`DeadlineExceededError` when it
passes before they are scheduled) and cancelled items (client gone) are dropped unrun.
Only one batch runs at a time: the runner owns the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("lass.batcher")

BatchMode = Literal["mixed", "language"]


class QueueFullError(Exception):
    """The bounded queue holds ``max_queue_size`` items already."""


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
    # mixed mode: among items of similar length (same bucket), prefer the languages with
    # the most pending items, so a batch holds fewer, larger language groups.
    language_affinity: bool = True
    length_bucket_samples: int = 16_000

    def __post_init__(self) -> None:
        if self.mode not in ("mixed", "language"):
            raise ValueError(f"mode must be 'mixed' or 'language', not {self.mode!r}")
        if self.max_batch_size < 1 or self.max_batch_samples < 1 or self.max_queue_size < 1:
            raise ValueError("max_batch_size, max_batch_samples, max_queue_size must be >= 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")


# The ways a batch policy can run pending work, in the order preferred on a tie: mixed
# batches (one forward for any languages), one-language batches, no batching.
WAYS = ("mixed", "language", "none")


def fastest_way(
    seconds: Mapping[str, float], tolerance: float = 0.02, min_batching_gain: float = 1.5
) -> str:
    """The way (of :data:`WAYS`) to serve with, from the seconds each took on the same work.

    Batching (mixed or language) is chosen only when the faster of the two ran the work at
    least ``min_batching_gain`` times faster than one item at a time (``none``): in a server
    a batch costs what an in-process timing does not see (every request waits for its whole
    batch, results come back in bursts that leave the model idle until clients return, and
    HTTP and decoding share the cores). On the 2-core CPU an in-process gain of 1.22x still
    lost 1.5-1.8x in the server, while a GPU gains several times (docs/benchmarks.md).
    Between mixed and language the faster wins; within ``tolerance`` of it, mixed.
    """
    timed = {way: seconds[way] for way in WAYS if way in seconds}
    if not timed:
        raise ValueError("no timings of mixed, language or none")
    batched = {way: t for way, t in timed.items() if way != "none"}
    if "none" in timed and (
        not batched or timed["none"] < min(batched.values()) * min_batching_gain
    ):
        return "none"
    best = min(batched.values())
    return next(way for way in batched if batched[way] <= best * (1 + tolerance))


def policy_for_way(policy: BatchPolicy, way: str) -> BatchPolicy:
    """``policy`` running pending work ``way``: ``none`` is one-language batches of one."""
    if way == "none":
        return dataclasses.replace(policy, mode="language", max_batch_size=1)
    if way not in ("mixed", "language"):
        raise ValueError(f"unknown way {way!r}")
    return dataclasses.replace(policy, mode=way)  # type: ignore[arg-type]


@dataclass(eq=False)
class WorkItem:
    """One unit of model work: an utterance or a chunk of one.

    ``payload`` is opaque to the batcher (the engine puts the samples there);
    ``num_samples`` is the item's length, used for grouping and the padding budget.
    """

    payload: Any
    num_samples: int
    group: str
    kind: str = "asr"
    deadline: float = math.inf
    request_id: str = ""
    enqueued_at: float = 0.0
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


Runner = Callable[[Batch], Awaitable[None]]
BatchHook = Callable[[Batch], None]


class Batcher:
    """Queue + scheduler loop feeding ``runner`` one batch at a time.

    ``runner(batch)`` must settle every item's future (result or exception); if it raises,
    the batcher fails the items it left unsettled with that exception.
    """

    def __init__(
        self,
        policy: BatchPolicy,
        runner: Runner,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchHook | None = None,
    ) -> None:
        self.policy = policy
        self._runner = runner
        self._clock = clock
        self._on_batch = on_batch
        self._pending: list[WorkItem] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._ids = itertools.count(1)
        self.expired = 0

    # --- public API -------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Pending (not yet scheduled) items."""
        return len(self._pending)

    @property
    def accepting(self) -> bool:
        return not self._closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def submit(self, item: WorkItem) -> asyncio.Future[Any]:
        """Queue ``item``; returns the future its result lands in.

        Raises :class:`QueueFullError` or :class:`ShuttingDownError` at once instead of queueing.
        """
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        if len(self._pending) >= self.policy.max_queue_size:
            raise QueueFullError(f"queue holds {len(self._pending)} items")
        item.enqueued_at = self._clock()
        item.future = asyncio.get_running_loop().create_future()
        self._pending.append(item)
        self._idle.clear()
        self._wake.set()
        return item.future

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
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ShuttingDownError("the server is shutting down"))
        self._pending.clear()
        self._idle.set()

    # --- scheduling -------------------------------------------------------------
    def _compatible(self, anchor: WorkItem, item: WorkItem) -> bool:
        if item.kind != anchor.kind:
            return False
        return self.policy.mode == "mixed" or item.group == anchor.group

    def _drop_dead(self) -> None:
        """Remove cancelled items and fail those past their deadline."""
        now = self._clock()
        keep: list[WorkItem] = []
        for item in self._pending:
            if item.future.done():
                continue
            if now > item.deadline:
                self.expired += 1
                item.future.set_exception(DeadlineExceededError("request timed out in the queue"))
                continue
            keep.append(item)
        self._pending = keep

    def _full(self, anchor: WorkItem) -> bool:
        candidates = [it for it in self._pending if self._compatible(anchor, it)]
        if len(candidates) >= self.policy.max_batch_size:
            return True
        longest = max(it.num_samples for it in candidates)
        return len(candidates) * longest >= self.policy.max_batch_samples

    def select(self) -> Batch:
        """Take the next batch off the queue (the queue must not be empty)."""
        anchor = self._pending[0]
        compatible = [it for it in self._pending[1:] if self._compatible(anchor, it)]
        bucket = max(1, self.policy.length_bucket_samples)
        rank: dict[str, int] = {anchor.group: 0}
        if self.policy.language_affinity:
            # Languages with the most pending items first (after the anchor's): fewer,
            # larger language groups inside the batch, so the masked layers run fewer,
            # larger matmuls. Queue order (= enqueued_at) breaks ties.
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
                it.enqueued_at,
            ),
        )
        chosen = [anchor]
        longest = anchor.num_samples
        for item in candidates:
            if len(chosen) >= self.policy.max_batch_size:
                break
            new_longest = max(longest, item.num_samples)
            if (len(chosen) + 1) * new_longest > self.policy.max_batch_samples:
                continue  # a shorter one further down may still fit
            chosen.append(item)
            longest = new_longest
        taken = set(map(id, chosen))
        self._pending = [it for it in self._pending if id(it) not in taken]
        # Keep the batch in queue order so results are easy to follow in logs.
        chosen.sort(key=lambda it: it.enqueued_at)
        return Batch(next(self._ids), chosen, anchor.kind, self._clock())

    async def _loop(self) -> None:
        while True:
            self._drop_dead()
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            anchor = self._pending[0]
            wait_left = anchor.enqueued_at + self.policy.max_wait_s - self._clock()
            if wait_left > 0 and not self._closed and not self._full(anchor):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_left)
                continue
            batch = self.select()
            if self._on_batch is not None:
                try:
                    self._on_batch(batch)
                except Exception:  # a broken hook must not stop serving
                    log.exception("batch hook failed")
            try:
                await self._runner(batch)
            except Exception as exc:
                log.exception("batch %d failed", batch.id)
                for item in batch.items:
                    if not item.future.done():
                        item.future.set_exception(exc)
