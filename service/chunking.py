"""Long audio: overlapping windows in, one stitched logit sequence out.

An utterance longer than the window is cut into windows of ``window`` samples that overlap
by ``overlap`` samples; every window starts on a frame boundary (``frame`` samples: the
served model's conv stride, 320 for every preset), so frame ``k`` of a window starting at
sample ``s`` is frame ``s / frame + k`` of the whole utterance. Each frame of the utterance
is taken from exactly one window: the overlap is split at its middle, so every kept frame
has at least ``overlap / 2`` of context on both sides (except at the utterance's ends).
Stitching happens on the logits, before CTC decoding, so the decoder sees one sequence and
word timestamps come out in utterance time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One window of an utterance; frames are utterance (global) frame indices."""

    index: int
    start: int  # first sample, a multiple of ``frame``
    end: int  # one past the last sample
    keep_start: int  # first global frame this window contributes
    keep_end: int | None  # one past its last global frame; None = to the window's end
    frame: int  # samples per model frame
    # Inside a long silence (silero-vad): not run through the model; its frames are blank.
    silent: bool = False

    @property
    def frame_offset(self) -> int:
        return self.start // self.frame


def plan_chunks(num_samples: int, window: int, overlap: int, frame: int) -> list[Chunk]:
    """Windows covering ``num_samples``; a single chunk when the audio fits one window.

    The last window is moved back to end exactly at the end of the audio, so no window is
    a short tail with little context.
    """
    if num_samples <= 0:
        raise ValueError("num_samples must be positive")
    if not 0 <= overlap < window:
        raise ValueError("overlap must be in [0, window)")
    window = max(frame, window - window % frame)
    if num_samples <= window:
        return [Chunk(0, 0, num_samples, 0, None, frame)]
    stride = max(frame, (window - overlap) // frame * frame)
    starts = list(range(0, num_samples - window, stride))
    last = (num_samples - window + frame - 1) // frame * frame
    last = min(last, num_samples - frame)
    if last > starts[-1]:
        starts.append(last)
    chunks: list[Chunk] = []
    keep_start = 0
    for i, start in enumerate(starts):
        end = min(start + window, num_samples)
        if i + 1 < len(starts):
            # The middle of the overlap with the next window, in global frames.
            boundary = (starts[i + 1] + end) // 2 // frame
            chunks.append(Chunk(i, start, end, keep_start, boundary, frame))
            keep_start = boundary
        else:
            chunks.append(Chunk(i, start, end, keep_start, None, frame))
    return chunks


def blank_logits(frames: int, width: int) -> np.ndarray:
    """``[frames, width]`` logits that CTC decodes as blank only (column 0 is the blank):
    what a silent piece contributes instead of running the model on it."""
    out = np.full((frames, width), -1000.0, dtype=np.float32)
    out[:, 0] = 0.0
    return out


def stitch(chunks: Sequence[Chunk], logits: Sequence[np.ndarray]) -> np.ndarray:
    """Join per-window logits ``[F_i, V]`` into the utterance's ``[F, V]``."""
    if len(chunks) != len(logits):
        raise ValueError("one logits array per chunk")
    parts = []
    for chunk, part in zip(chunks, logits, strict=True):
        lo = chunk.keep_start - chunk.frame_offset
        hi = None if chunk.keep_end is None else chunk.keep_end - chunk.frame_offset
        parts.append(part[max(lo, 0) : hi])
    return np.concatenate(parts, axis=0)
