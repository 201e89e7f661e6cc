"""The engine in-process (no HTTP): deadlines, short audio, LID, beam search, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.batcher import DeadlineExceededError, ShuttingDownError
from service.engine import AudioTooShortError, DecodeOptions, Engine
from service.settings import Settings


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


def test_engine_paths(tiny_bundle: Path) -> None:
    async def main() -> None:
        settings = Settings(
            bundle=tiny_bundle,
            torch_threads=1,
            max_wait_ms=1000,
            request_timeout_s=0.2,
            warmup=False,
            batch_mode="mixed",  # batches wait for mates: what the deadline check needs
        )
        engine = Engine(settings)
        await engine.start()
        await engine.wait_ready()
        assert engine.languages == ["de", "en", "es", "it"]
        # Waits 1 s for batch-mates, but its deadline is 0.2 s: refused unrun.
        with pytest.raises(DeadlineExceededError):
            await engine.transcribe(noise(1.0), "en")
        settings.request_timeout_s = 30
        with pytest.raises(AudioTooShortError):
            await engine.transcribe(noise(0.05), "en")
        language, probability = await engine.identify(noise(1.0))
        assert language in engine.languages and 0 < probability <= 1
        greedy, beam = await asyncio.gather(
            engine.transcribe(noise(1.5), "de"),
            engine.transcribe(noise(1.5), "de", DecodeOptions(beam=True, hotwords=("tag",))),
        )
        assert greedy.language == beam.language == "de"
        assert greedy.transcript.duration == pytest.approx(1.5, abs=0.03)
        assert beam.transcript.lm_score is not None  # pyctcdecode's score: the beam path ran
        assert greedy.batches[0].batch_id == beam.batches[0].batch_id  # one batch for both
        # Stop drains what is queued, then refuses new work.
        pending = asyncio.ensure_future(engine.transcribe(noise(1.0), "it"))
        await asyncio.sleep(0.05)
        await engine.stop()
        assert (await pending).language == "it"
        with pytest.raises(ShuttingDownError):
            await engine.transcribe(noise(1.0), "it")

    asyncio.run(asyncio.wait_for(main(), 120))


def test_two_model_threads_run_batches_at_once_and_a_removal_waits_for_them(
    tiny_bundle: Path,
) -> None:
    """LASS_MODEL_THREADS=2: two batches run at once, each with the logits one thread
    gives; removing a language happens with no forward running (Batcher.exclusive)."""

    async def logits_of(engine: Engine, clips: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(engine.stream_logits(c, lang) for c, lang in clips)))

    clips = [(noise(1.0 + 0.1 * k, seed=k), ("de", "en", "es", "it")[k % 4]) for k in range(12)]

    async def main() -> None:
        common = {
            "bundle": tiny_bundle,
            "warmup": False,
            "batch_mode": "language",
            # a loaded CI machine must not time them out
            "stream_partial_timeout_s": 60,
            "max_queue_wait_s": 0,
        }
        one = Engine(Settings(**common, model_threads=1, torch_threads=1))  # type: ignore[arg-type]
        await one.start()
        await one.wait_ready()
        expected = await logits_of(one, clips)
        await one.stop()

        engine = Engine(Settings(**common, model_threads=2, torch_threads=2))  # type: ignore[arg-type]
        assert (engine.model_threads, engine._torch_threads) == (2, 1)
        await engine.start()
        await engine.wait_ready()
        worker = engine.worker
        assert worker is not None
        assert engine.batch_choice is not None and engine.batch_choice["model_threads"] == 2
        running, most, during_removal = 0, 0, []
        lock = threading.Lock()
        run_asr, remove = worker.run_asr, worker.remove_language

        def counted(*args: Any) -> Any:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                time.sleep(0.05)  # long enough for the other thread's batch to overlap
                return run_asr(*args)
            finally:
                with lock:
                    running -= 1

        def removing(*args: Any) -> Any:
            during_removal.append(running)
            return remove(*args)

        worker.run_asr = counted  # type: ignore[method-assign]
        worker.remove_language = removing  # type: ignore[method-assign]
        got = await logits_of(engine, clips)
        assert most == 2
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
        # A removal while batches of other languages run: it waits for them.
        others = [c for c in clips if c[1] != "it"]
        busy = asyncio.ensure_future(logits_of(engine, others * 2))
        await asyncio.sleep(0.02)
        await engine.remove_language("it")
        assert during_removal == [0]
        assert "it" not in engine.languages
        kept = [e for c, e in zip(clips, expected, strict=True) if c[1] != "it"] * 2
        for a, b in zip(await busy, kept, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
        await engine.stop()

    asyncio.run(asyncio.wait_for(main(), 120))
