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
    QueueTimeoutError,
    ShuttingDownError,
    WorkItem,
    fastest_way,
    plan,
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


class Concurrency:
    """A runner that counts the batches running at once, each held ``hold`` seconds."""

    def __init__(self, hold: float = 0.05) -> None:
        self.hold = hold
        self.now = 0
        self.most = 0
        self.started: list[int] = []

    async def __call__(self, batch: Batch) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        self.started.append(batch.id)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.now -= 1
        for it in batch.items:
            it.future.set_result(batch.id)


def one_clip_batches(runner: Concurrency, runners: int) -> Batcher:
    """A started batcher of one-item batches (no waiting) over ``runners`` runners."""
    batcher = Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0), runner, runners=runners)
    batcher.start()
    return batcher


@pytest.mark.parametrize("runners", [1, 2, 3])
def test_up_to_runners_batches_run_at_once(runners: int) -> None:
    async def main() -> None:
        runner = Concurrency()
        batcher = one_clip_batches(runner, runners)
        futures = [batcher.submit(item(i)) for i in range(6)]
        assert sorted(await asyncio.gather(*futures)) == [1, 2, 3, 4, 5, 6]
        assert runner.most == runners
        await batcher.stop()

    run(main)


def test_exclusive_waits_for_running_batches_and_holds_new_ones() -> None:
    async def main() -> None:
        runner = Concurrency(hold=0.1)
        batcher = one_clip_batches(runner, 2)
        first = [batcher.submit(item(i)) for i in range(2)]
        await asyncio.sleep(0.02)
        assert batcher.running == 2
        async with batcher.exclusive():
            assert batcher.running == 0 and runner.now == 0
            assert all(f.done() for f in first)
            later = batcher.submit(item(9))
            await asyncio.sleep(0.05)
            assert not later.done() and batcher.running == 0 and batcher.depth == 1
        assert await later == 3
        await batcher.stop()

    run(main)


def test_stop_without_draining_fails_the_running_batches_items() -> None:
    async def main() -> None:
        runner = Concurrency(hold=5.0)
        batcher = one_clip_batches(runner, 2)
        futures = [batcher.submit(item(i)) for i in range(3)]
        await asyncio.sleep(0.02)
        await batcher.stop(drain=False)
        for f in futures:
            with pytest.raises(ShuttingDownError):
                f.result()

    run(main)


def test_stop_drains_every_runner() -> None:
    async def main() -> None:
        runner = Concurrency(hold=0.05)
        batcher = one_clip_batches(runner, 2)
        futures = [batcher.submit(item(i)) for i in range(5)]
        await batcher.stop(drain=True)
        assert all(f.done() and not f.exception() for f in futures)
        assert runner.most == 2

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


def test_fastest_way_prefers_language_batches_unless_mixed_pays_clearly() -> None:
    # A GPU: one mixed launch for every language is several times faster.
    assert fastest_way({"mixed": 1.0, "language": 3.0, "none": 8.0}) == "mixed"
    # The quiet 2-core CPU (default bundle's warm-up): language, what the server ran fastest.
    assert fastest_way({"mixed": 0.148, "language": 0.202, "none": 0.234}) == "language"
    assert fastest_way({"mixed": 1.3, "language": 1.0, "none": 4.0}) == "language"
    # Two model threads of one core each, 8 clips: the default bundle (0.03 s a clip)
    # batched 1.09x faster at warm-up and served 1.05x; base (0.26 s a clip) 1.08x at
    # warm-up, but served 0.95x: long items need a clearer gain.
    tiny = {"mixed": 0.2316, "language": 0.2088, "none": 0.2275}
    assert fastest_way(tiny, items=8) == "language"
    base = {"mixed": 2.102, "language": 1.9173, "none": 2.0752}
    assert fastest_way(base, items=8) == "none"
    assert fastest_way({"mixed": 1.285, "language": 1.191, "none": 1.382}, items=8) == "language"
    # Batching that barely pays (base on the CPU: 3.87 s vs 3.93 s): one at a time.
    assert fastest_way({"mixed": 6.10, "language": 3.87, "none": 3.93}) == "none"
    assert fastest_way({"mixed": 0.546, "none": 0.666}, items=8) == "mixed"
    assert fastest_way({"mixed": 0.546, "none": 0.666}, items=8, min_batching_gain=1.3) == "none"
    # one item of 0.666 s: a long item, so 1.22x is enough only below long_batching_gain
    assert fastest_way({"mixed": 0.546, "none": 0.666}) == "mixed"
    assert fastest_way({"mixed": 0.546, "none": 0.666}, long_batching_gain=1.25) == "none"
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


# --- plan(): the policy as a pure function of (pending, policy, now), no loop, no sleeps


def queued(
    payload: Any, at: float, tag: float, seconds: float = 1.0, lang: str = "en", **kw: Any
) -> WorkItem:
    """An item as Batcher.submit leaves it: enqueued at ``at`` with fair start tag ``tag``."""
    it = item(payload, seconds, lang, **kw)
    it.enqueued_at, it.start_tag = at, tag
    return it


def payloads(items: Any) -> list[Any]:
    return [it.payload for it in items]


def test_plan_waits_for_mates_until_max_wait_or_a_full_batch() -> None:
    policy = BatchPolicy(max_batch_size=3, max_wait_s=0.5)
    pending = [queued("a", 10.0, 0.0), queued("b", 10.1, 0.0)]
    step = plan(pending, policy, now=10.2)
    assert step.batch == () and step.wait_s == pytest.approx(0.3)
    assert payloads(plan(pending, policy, now=10.5).batch) == ["a", "b"]
    assert payloads(plan(pending, policy, now=10.2, flush=True).batch) == ["a", "b"]
    full = [*pending, queued("c", 10.15, 0.0)]
    assert payloads(plan(full, policy, now=10.2).batch) == ["a", "b", "c"]
    assert plan([], policy, now=0.0) == plan([], policy, now=99.0)


def test_plan_anchors_on_the_lowest_fair_tag_not_the_oldest_item() -> None:
    # A long request's later pieces (tags 1, 2, 3 s of audio in samples) were queued
    # before a new request's clip (tag 1 s: virtual time when it arrived).
    sec = 16_000
    policy = BatchPolicy(max_batch_size=1, max_wait_s=0)
    long_pieces = [queued(f"long{k}", 0.0, k * sec, flow="L") for k in (1, 2, 3)]
    clip = queued("clip", 5.0, 1 * sec - 1, flow="C")
    assert payloads(plan([*long_pieces, clip], policy, now=5.0).batch) == ["clip"]
    # Equal tags: the older item first.
    clip.start_tag = 1 * sec
    assert payloads(plan([*long_pieces, clip], policy, now=5.0).batch) == ["long1"]


def test_plan_fills_by_length_then_language_then_fair_order() -> None:
    policy = BatchPolicy(max_batch_size=3, max_wait_s=0, length_bucket_samples=16_000)
    pending = [
        queued("anchor", 0.0, 0.0, seconds=4.0, lang="en"),
        queued("far", 0.0, 1.0, seconds=20.0, lang="en"),
        queued("de-late", 0.0, 3.0, seconds=4.2, lang="de"),
        queued("fr", 0.0, 2.0, seconds=4.1, lang="fr"),
        queued("de-early", 0.0, 2.5, seconds=4.3, lang="de"),
    ]
    # Similar lengths first; among them de (2 pending) before fr (1), tag order within de.
    assert payloads(plan(pending, policy, now=1.0).batch) == ["anchor", "de-early", "de-late"]
    language = dataclasses.replace(policy, mode="language")
    assert payloads(plan(pending, language, now=1.0).batch) == ["anchor", "far"]


def test_plan_returns_expired_and_overdue_items_to_fail() -> None:
    policy = BatchPolicy(max_batch_size=4, max_wait_s=0)
    late = queued("late", 0.0, 0.0, deadline=1.0)
    overdue = queued("overdue", 0.0, 0.0)
    overdue.queue_deadline = 2.0
    ok = queued("ok", 0.0, 0.0)
    step = plan([late, overdue, ok], policy, now=3.0)
    assert payloads(step.expired) == ["late"] and payloads(step.overdue) == ["overdue"]
    assert payloads(step.batch) == ["ok"]
    # Past both: counted as expired (the request's own deadline), not twice.
    both = queued("both", 0.0, 0.0, deadline=1.0)
    both.queue_deadline = 1.0
    step = plan([both], policy, now=3.0)
    assert payloads(step.expired) == ["both"] and step.overdue == () and step.batch == ()


def test_a_long_request_does_not_starve_a_later_short_one() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        batcher = Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0), rec)
        batcher.start()
        blocker = batcher.submit(item("blocker", flow="B"))
        await asyncio.sleep(0.02)  # in the runner
        long = batcher.submit_all([item(f"long{k}", 30.0, flow="L") for k in range(20)])
        short = batcher.submit(item("short", 4.0, flow="S"))
        rec.gate.set()
        await asyncio.gather(blocker, *long, short)
        order = [b.items[0].payload for b in rec.batches]
        # One piece of the long request, then the short clip: not all 20 pieces first.
        assert order[:3] == ["blocker", "long0", "short"]
        assert order[3:] == [f"long{k}" for k in range(1, 20)]
        await batcher.stop()

    run(main)


def test_two_long_requests_take_turns() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        batcher = Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0), rec)
        batcher.start()
        blocker = batcher.submit(item("blocker"))
        await asyncio.sleep(0.02)
        a = batcher.submit_all([item(f"a{k}", flow="A") for k in range(3)])
        b = batcher.submit_all([item(f"b{k}", flow="B") for k in range(3)])
        rec.gate.set()
        await asyncio.gather(blocker, *a, *b)
        order = [bt.items[0].payload for bt in rec.batches][1:]
        assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]
        await batcher.stop()

    run(main)


def test_queue_wait_is_bounded_for_a_request_that_cannot_start() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate = asyncio.Event()
        policy = BatchPolicy(max_batch_size=1, max_wait_s=0, max_queue_wait_s=0.05)
        batcher = Batcher(policy, rec)
        batcher.start()
        running = batcher.submit(item("running"))
        await asyncio.sleep(0.02)
        first, later = batcher.submit_all([item("first", flow="R"), item("later", flow="R")])
        assert first is not later
        await asyncio.sleep(0.1)  # past the bound while the runner is busy
        rec.gate.set()
        await running
        with pytest.raises(QueueTimeoutError, match="without starting"):
            await first
        assert batcher.overdue == 1
        assert (await later)[1] == "later"  # its request's bound is on its first piece
        # A request that started in time runs its later pieces however long they wait.
        rec.gate.clear()
        x, y = batcher.submit_all([item("x", flow="X"), item("y", flow="X")])
        await asyncio.sleep(0.02)  # x is in the runner, y waits behind it
        await asyncio.sleep(0.1)
        rec.gate.set()
        assert [(await x)[1], (await y)[1]] == ["x", "y"]
        await batcher.stop()

    run(main)


def test_a_request_whose_estimated_wait_is_past_the_bound_is_refused_at_once() -> None:
    async def main() -> None:
        rec = Recorder(delay=0.02)  # 1 s of audio per 20 ms: ~50x real time
        policy = BatchPolicy(max_batch_size=1, max_wait_s=0, max_queue_wait_s=0.3)
        batcher = Batcher(policy, rec)
        batcher.start()
        for k in range(4):  # measure the throughput
            await batcher.submit(item(k))
        assert batcher.throughput is not None
        rec.gate = asyncio.Event()
        busy: list[asyncio.Future[Any]] = []
        with pytest.raises(QueueFullError, match="about"):
            # Requests of 1 s each, all fairly ahead of the next: at ~50 s of audio a
            # second, the bound of 0.3 s is passed after about 15 of them.
            for k in range(100):
                busy.append(batcher.submit(item(f"r{k}", flow=f"r{k}")))
                await asyncio.sleep(0)
        assert 5 <= len(busy) <= 40
        assert batcher.depth == len(busy) - 1  # one runs; nothing of the refused one queued
        rec.gate.set()
        outcomes = await asyncio.gather(*busy, return_exceptions=True)
        # Those queued in time ran or timed out in the queue: nothing else.
        assert all(isinstance(o, tuple | QueueTimeoutError) for o in outcomes)
        await batcher.stop()

    run(main)
