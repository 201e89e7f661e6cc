"""The dynamic batcher on its own: no HTTP, no torch."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service.batcher import (
    Batch,
    Batcher,
    BatchPolicy,
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
    WorkItem,
    fastest_way,
    policy_for_way,
)


class Recorder:
    """A runner that records batches and answers each item with (batch id, payload)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[Batch] = []
        self.delay = delay
        self.gate: asyncio.Event | None = None

    async def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        for item in batch.items:
            item.future.set_result((batch.id, item.payload))


def item(payload: Any, seconds: float = 1.0, lang: str = "en", **kw: Any) -> WorkItem:
    return WorkItem(payload, int(seconds * 16_000), lang, **kw)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 10))


def test_mixed_languages_share_one_batch() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=8, max_wait_s=0.05), rec)
        batcher.start()
        futures = [
            batcher.submit(item(i, lang=lang)) for i, lang in enumerate("en de es it".split())
        ]
        results = await asyncio.gather(*futures)
        assert [r[1] for r in results] == [0, 1, 2, 3]
        assert len(rec.batches) == 1
        assert rec.batches[0].groups == ["de", "en", "es", "it"]
        await batcher.stop()

    run(main)


def test_language_mode_never_mixes_languages() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(mode="language", max_batch_size=8, max_wait_s=0.05), rec)
        batcher.start()
        langs = ["en", "de", "en", "de", "es"]
        await asyncio.gather(*(batcher.submit(item(i, lang=g)) for i, g in enumerate(langs)))
        assert sorted(len(b.groups) for b in rec.batches) == [1, 1, 1]
        sizes = {b.groups[0]: b.size for b in rec.batches}
        assert sizes == {"en": 2, "de": 2, "es": 1}
        await batcher.stop()

    run(main)


def test_batch_size_one_means_no_batching() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0.05), rec)
        batcher.start()
        await asyncio.gather(*(batcher.submit(item(i)) for i in range(5)))
        assert [b.size for b in rec.batches] == [1] * 5
        # First come, first served.
        assert [b.items[0].payload for b in rec.batches] == [0, 1, 2, 3, 4]
        await batcher.stop()

    run(main)


def test_max_batch_size_splits_a_burst() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=4, max_wait_s=0.05), rec)
        batcher.start()
        await asyncio.gather(*(batcher.submit(item(i)) for i in range(10)))
        assert [b.size for b in rec.batches] == [4, 4, 2]
        await batcher.stop()

    run(main)


def test_padding_budget_and_length_grouping() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        # Budget: 9 s padded (4 x 2.1 s fits, 2 x 8 s does not).
        policy = BatchPolicy(max_batch_size=8, max_batch_samples=9 * 16_000, max_wait_s=0)
        batcher = Batcher(policy, rec)
        batcher.start()
        first = batcher.submit(item("warm", 0.5))
        await asyncio.sleep(0.02)  # the first batch holds the runner while the rest queue up
        lengths = [2.0, 8.0, 1.9, 7.5, 2.1, 1.8]
        futures = [batcher.submit(item(s, s)) for s in lengths]
        rec.gate.set()
        await asyncio.gather(first, *futures)
        batches = [sorted(it.payload for it in b.items) for b in rec.batches[1:]]
        # Anchored on the oldest (2.0 s): the similar short ones join it, 8 s and 7.5 s don't
        # fit the budget with them; the two long ones form their own batches.
        assert batches[0] == [1.8, 1.9, 2.0, 2.1]
        assert sorted(map(tuple, batches[1:])) == [(7.5,), (8.0,)]
        for b in rec.batches:
            assert b.padded_samples <= policy.max_batch_samples or b.size == 1
        await batcher.stop()

    run(main)


def test_max_wait_bounds_latency_at_low_load() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=16, max_wait_s=0.2), rec)
        batcher.start()
        start = time.monotonic()
        await batcher.submit(item(0))
        elapsed = time.monotonic() - start
        assert 0.18 <= elapsed < 1.0
        await batcher.stop()

    run(main)


def test_full_batch_does_not_wait() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=2, max_wait_s=5.0), rec)
        batcher.start()
        start = time.monotonic()
        await asyncio.gather(batcher.submit(item(0)), batcher.submit(item(1)))
        assert time.monotonic() - start < 1.0
        await batcher.stop()

    run(main)


def test_queue_full_is_raised_at_submit() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        batcher = Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0, max_queue_size=2), rec)
        batcher.start()
        running = batcher.submit(item(0))
        await asyncio.sleep(0.02)  # item 0 is in the runner now, the queue is empty
        queued = [batcher.submit(item(1)), batcher.submit(item(2))]
        with pytest.raises(QueueFullError):
            batcher.submit(item(3))
        assert batcher.depth == 2
        rec.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.stop()

    run(main)


def test_deadline_passes_in_queue() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        batcher = Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0), rec)
        batcher.start()
        running = batcher.submit(item(0))
        await asyncio.sleep(0.02)
        late = batcher.submit(item(1, deadline=time.monotonic() + 0.05))
        ok = batcher.submit(item(2))
        await asyncio.sleep(0.1)
        rec.gate.set()
        with pytest.raises(DeadlineExceededError):
            await late
        await asyncio.gather(running, ok)
        assert batcher.expired == 1
        assert all(it.payload != 1 for b in rec.batches for it in b.items)
        await batcher.stop()

    run(main)


def test_cancelled_items_are_not_run() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        batcher = Batcher(BatchPolicy(max_batch_size=4, max_wait_s=0), rec)
        batcher.start()
        running = batcher.submit(item(0))
        await asyncio.sleep(0.02)
        gone = batcher.submit(item(1))
        kept = batcher.submit(item(2))
        gone.cancel()
        rec.gate.set()
        await asyncio.gather(running, kept)
        assert [sorted(it.payload for it in b.items) for b in rec.batches] == [[0], [2]]
        await batcher.stop()

    run(main)


def test_kinds_never_share_a_batch() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=8, max_wait_s=0.05), rec)
        batcher.start()
        await asyncio.gather(
            batcher.submit(item(0)), batcher.submit(item(1, kind="lid")), batcher.submit(item(2))
        )
        assert sorted((b.kind, b.size) for b in rec.batches) == [("asr", 2), ("lid", 1)]
        await batcher.stop()

    run(main)


def test_runner_failure_reaches_every_item_and_batcher_survives() -> None:
    async def main() -> None:
        calls = 0

        async def runner(batch: Batch) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("device lost")
            for it in batch.items:
                it.future.set_result("ok")

        batcher = Batcher(BatchPolicy(max_batch_size=4, max_wait_s=0.02), runner)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit(item(0)), batcher.submit(item(1)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await batcher.submit(item(2)) == "ok"
        await batcher.stop()

    run(main)


def test_stop_drains_then_refuses() -> None:
    async def main() -> None:
        rec = Recorder(delay=0.05)
        batcher = Batcher(BatchPolicy(max_batch_size=2, max_wait_s=0), rec)
        batcher.start()
        futures = [batcher.submit(item(i)) for i in range(5)]
        await batcher.stop(drain=True)
        assert all(f.done() and not f.exception() for f in futures)
        with pytest.raises(ShuttingDownError):
            batcher.submit(item(9))

    run(main)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(mode="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=0)


def test_language_affinity_makes_fewer_language_groups() -> None:
    langs = ["en", "de", "es", "it", "de", "fr", "de", "en", "de", "es", "en", "de"]

    async def first_batches(affinity: bool) -> list[list[str]]:
        rec = Recorder()
        rec.gate = asyncio.Event()
        policy = BatchPolicy(max_batch_size=4, max_wait_s=0, language_affinity=affinity)
        batcher = Batcher(policy, rec)
        batcher.start()
        warm = batcher.submit(item("warm"))
        await asyncio.sleep(0.02)
        futures = [batcher.submit(item(i, lang=g)) for i, g in enumerate(langs)]
        rec.gate.set()
        await asyncio.gather(warm, *futures)
        await batcher.stop()
        return [[it.group for it in b.items] for b in rec.batches[1:]]

    async def main() -> None:
        fifo = await first_batches(False)
        affine = await first_batches(True)
        assert fifo[0] == ["en", "de", "es", "it"]  # queue order: four languages
        # Anchored on the oldest (en): its language first, then the most frequent (de).
        assert sorted(affine[0]) == ["de", "en", "en", "en"]
        assert sum(len(set(b)) for b in affine) < sum(len(set(b)) for b in fifo)
        # Every item still ran exactly once.
        assert sorted(g for b in affine for g in b) == sorted(langs)

    run(main)


def test_fastest_way_batches_only_when_it_pays_and_prefers_mixed_on_a_tie() -> None:
    # batching well over 1.5x faster than one at a time (a GPU): the faster batched way
    assert fastest_way({"mixed": 1.0, "language": 1.3, "none": 4.0}) == "mixed"
    assert fastest_way({"mixed": 1.3, "language": 1.0, "none": 4.0}) == "language"
    assert fastest_way({"mixed": 1.01, "language": 1.0, "none": 4.0}) == "mixed"  # a tie
    # batching 1.22x faster in-process (the 2-core CPU): not worth its cost in a server
    assert fastest_way({"mixed": 0.546, "language": 0.559, "none": 0.666}) == "none"
    assert fastest_way({"mixed": 0.546, "none": 0.666}, min_batching_gain=1.2) == "mixed"
    assert fastest_way({"language": 2.0}) == "language"
    assert fastest_way({"none": 2.0}) == "none"
    with pytest.raises(ValueError, match="no timings"):
        fastest_way({"other": 1.0})


def test_policy_for_way() -> None:
    base = BatchPolicy(mode="mixed", max_batch_size=16, max_wait_s=0.02)
    assert policy_for_way(base, "language") == dataclasses.replace(base, mode="language")
    assert policy_for_way(base, "mixed") == base
    none = policy_for_way(base, "none")
    assert none.max_batch_size == 1 and none.max_wait_s == 0.02
    with pytest.raises(ValueError, match="unknown way"):
        policy_for_way(base, "fastest")
