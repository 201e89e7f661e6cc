"""Long-audio windows and logit stitching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.config import FRAME_STRIDE as FRAME_SAMPLES
from service.chunking import plan_chunks, stitch

SR = 16_000


def conv_frames(num_samples: int) -> int:
    """Frames a wav2vec 2.0 feature encoder yields (receptive field 400, stride 320)."""
    return (num_samples - 400) // FRAME_SAMPLES + 1


def test_short_audio_is_one_chunk() -> None:
    chunks = plan_chunks(5 * SR, 30 * SR, 2 * SR, FRAME_SAMPLES)
    assert len(chunks) == 1
    assert (chunks[0].start, chunks[0].end) == (0, 5 * SR)


@pytest.mark.parametrize("seconds", [30.01, 31.0, 58.0, 95.3, 301.7])
def test_windows_cover_the_audio_and_stitch_to_global_frames(seconds: float) -> None:
    n = int(seconds * SR)
    window, overlap = 30 * SR, 2 * SR
    chunks = plan_chunks(n, window, overlap, FRAME_SAMPLES)
    assert chunks[0].start == 0 and chunks[-1].end == n
    for a, b in itertools.pairwise(chunks):
        assert b.start % FRAME_SAMPLES == 0
        assert a.end - b.start >= overlap  # neighbours overlap by at least `overlap`
        # the frame handed over sits at least a quarter overlap away from both edges
        assert a.keep_end is not None
        assert a.keep_end * FRAME_SAMPLES - b.start >= overlap // 4
        assert a.end - a.keep_end * FRAME_SAMPLES >= overlap // 4
    assert all(c.end - c.start <= window for c in chunks)
    # Fake logits whose single column is the global frame index: stitching must give
    # every frame of the utterance exactly once, in order.
    logits = [
        np.arange(c.frame_offset, c.frame_offset + conv_frames(c.end - c.start), dtype=np.float32)[
            :, None
        ]
        for c in chunks
    ]
    joined = stitch(chunks, logits)
    assert joined.shape == (conv_frames(n), 1)
    np.testing.assert_array_equal(joined[:, 0], np.arange(conv_frames(n)))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        plan_chunks(0, 30 * SR, 0, FRAME_SAMPLES)
    with pytest.raises(ValueError):
        plan_chunks(SR, 30 * SR, 30 * SR, FRAME_SAMPLES)
