"""A bundle whose conv strides give another frame than the presets' 20 ms (an imported
checkpoint may): the service takes the frame from the bundle, so long audio is stitched
frame-exact and timestamps are in seconds, not in 20 ms units."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import torch

from model.bundle import write_bundle
from model.config import SAMPLE_RATE, get_preset
from model.masks import LanguageMasks
from model.network import LassModel
from model.vocab import Vocabulary
from service.engine import Engine
from service.settings import Settings


def wide_frame_bundle(out: Path) -> Path:
    """A random tiny bundle whose last conv layer strides 4: 640-sample (40 ms) frames."""
    torch.manual_seed(0)
    tiny = get_preset("tiny")
    conv = list(tiny.extractor_conv_layer_config)
    channels, kernel, _ = conv[-1]
    conv[-1] = (channels, kernel, 4)
    config = dataclasses.replace(tiny, extractor_conv_layer_config=tuple(conv))
    assert config.frame_stride == 640
    vocab = Vocabulary.build({"en": ["a cat sat on the mat"]})
    model = LassModel(config, len(vocab), ["en"], lid_head=False).eval()
    masks = LanguageMasks(model.prunable_shapes())
    masks.add(
        "en", {n: torch.ones(s, dtype=torch.bool) for n, s in model.prunable_shapes().items()}
    )
    return write_bundle(out, model, vocab, masks, provenance={"name": "wide", "test": True})


def test_long_audio_on_a_40_ms_model_is_stitched_and_timed_in_its_frames(tmp_path: Path) -> None:
    settings = Settings(
        bundle=wide_frame_bundle(tmp_path / "wide"),
        long_audio_split="windows",
        chunk_seconds=10,
        chunk_overlap_seconds=2,
        warmup=False,
        torch_threads=1,
        compile="off",
    )
    seconds = 25.0
    samples = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE))).astype(
        np.float32
    )

    async def run() -> tuple[int, list[int], float, int]:
        engine = Engine(settings)
        await engine.start()
        await engine.wait_ready()
        try:
            frame = engine.frame_samples
            chunks = engine.plan_windows(len(samples))
            result = await engine.transcribe(samples, "en")
        finally:
            await engine.stop()
        assert engine.worker is not None
        model = engine.worker.model
        frames = int(model.frame_lengths(torch.tensor([len(samples)]))[0])
        return frame, [c.start for c in chunks], result.transcript.duration, frames

    frame, starts, duration, frames = asyncio.run(run())
    assert frame == 640
    assert len(starts) > 2 and all(s % 640 == 0 for s in starts)
    # Every frame of the whole audio exactly once, each 40 ms long.
    assert duration == frames * 0.04
    assert abs(duration - seconds) < 0.1
