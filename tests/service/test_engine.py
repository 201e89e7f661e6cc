"""The engine in-process (no HTTP): deadlines, short audio, LID, beam search, draining."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
