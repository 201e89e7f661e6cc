"""Long audio: cut at silences found by silero-vad, in the Chunk/stitch terms of chunking.py.

silero-vad (its TorchScript model ships inside the PyPI wheel; nothing is downloaded) gives
a speech probability per 512-sample VAD frame (32 ms at 16 kHz). Runs of non-speech frames
at least ``min_silence_s`` long are silences; a cut goes at the middle of a silence,
rounded to a model frame (the served model's conv stride: 320 samples for every preset).
:func:`plan_pieces` picks, greedily, the latest cut that keeps a piece within the window,
so pieces are as long as the window allows.

Every sample belongs to the kept span ``[keep_start, keep_end)`` (in model frames) of
exactly one piece, and kept spans do not overlap. A piece's input runs one model frame
(inside the silence) past its cut: a frame ``k`` needs samples up to ``frame * k`` plus the
feature encoder's receptive field (400 samples for the presets), so without it the frame
just before each cut would be missing and timestamps after it would drift by 20 ms per cut.

A speech run longer than the window with no silence to cut at falls back to the overlapping
windows of :func:`service.chunking.plan_chunks` for that stretch only.

Silences of at least ``skip_silence`` samples are also cut ``SKIP_PAD`` inside each edge,
and the pieces that lie wholly inside one are marked ``silent``: the engine does not run
the model on them (their frames decode as blank), so 29 minutes of silence cost no
inference while speech next to it keeps a quarter second of silent context.

Importing ``silero_vad`` calls ``torch.set_num_threads(1)`` (process-wide: it would cripple
inference). :func:`import_silero` imports it lazily and restores the thread count.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.config import SAMPLE_RATE
from service.chunking import Chunk, plan_chunks

log = logging.getLogger("lass.vad")

VAD_FRAME = 512  # silero-vad's frame at 16 kHz
# Batched VAD: the audio is cut into rows of ROW_SAMPLES, each run from a fresh model state
# after WARMUP_SAMPLES of the audio before it (whose probabilities are dropped). Rows run
# as one batch: about 7x faster than one sequential pass on one CPU core.
ROW_SAMPLES = 125 * VAD_FRAME  # 4.0 s
WARMUP_SAMPLES = 16 * VAD_FRAME  # 0.512 s
ROWS_PER_CALL = 64  # rows per model call: bounds the copy to ~18 MB
MIN_PIECE_SAMPLES = SAMPLE_RATE // 2  # no piece shorter than 0.5 s is cut off
SKIP_PAD = SAMPLE_RATE // 4  # silence kept as context beside speech when skipping the rest


def import_silero() -> Any:
    """``silero_vad`` imported without its side effect on torch's thread count."""
    threads = torch.get_num_threads()
    try:
        import silero_vad
    finally:
        torch.set_num_threads(threads)
    return silero_vad


class SileroVad:
    """silero-vad's JIT model; not thread-safe (it keeps state): call from one thread."""

    def __init__(self, model: torch.jit.ScriptModule) -> None:
        self.model = model

    @classmethod
    def load(cls) -> SileroVad:
        """Load the JIT model packaged in the silero-vad wheel (never downloads)."""
        silero_vad = import_silero()
        threads = torch.get_num_threads()
        try:
            with warnings.catch_warnings():
                # torch.jit.load's FutureWarning, importlib.resources.path's DeprecationWarning
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                model = silero_vad.load_silero_vad(onnx=False)
        finally:
            torch.set_num_threads(threads)
        return cls(model)

    def speech_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability per VAD frame: ``samples [T]`` 16 kHz -> ``[ceil(T / 512)]``.

        Frame ``k`` covers samples ``[512 k, 512 k + 512)``.
        """
        num = len(samples)
        frames = -(-num // VAD_FRAME)
        rows = max(1, -(-num // ROW_SAMPLES))
        padded = np.zeros(WARMUP_SAMPLES + rows * ROW_SAMPLES, dtype=np.float32)
        padded[WARMUP_SAMPLES : WARMUP_SAMPLES + num] = samples
        # Row r: warm-up samples, then samples [r * ROW, (r + 1) * ROW) of the audio.
        span = np.arange(WARMUP_SAMPLES + ROW_SAMPLES)
        out: list[torch.Tensor] = []
        for first in range(0, rows, ROWS_PER_CALL):
            starts = np.arange(first, min(rows, first + ROWS_PER_CALL)) * ROW_SAMPLES
            batch = torch.from_numpy(padded[starts[:, None] + span[None, :]])  # [R, W + ROW]
            with torch.inference_mode():
                probs = self.model.audio_forward(batch, SAMPLE_RATE)  # [R, (W + ROW) / 512]
            out.append(probs[:, WARMUP_SAMPLES // VAD_FRAME :].reshape(-1))
        kept = torch.cat(out)
        return kept[:frames].float().numpy()

    def block_probabilities(self, context: np.ndarray, block: np.ndarray) -> np.ndarray:
        """Speech probability per VAD frame of ``block [n]`` (``n`` a multiple of 512), from a
        fresh state warmed up on ``context`` (the audio just before it, at most
        ``WARMUP_SAMPLES`` used; zeros stand in for what a stream's start lacks): the same
        rule as the rows of :meth:`speech_probabilities`, for audio that arrives in blocks."""
        if len(block) % VAD_FRAME:
            raise ValueError(f"block length {len(block)} is not a multiple of {VAD_FRAME}")
        row = np.zeros(WARMUP_SAMPLES + len(block), dtype=np.float32)
        warm = context[-WARMUP_SAMPLES:]
        row[WARMUP_SAMPLES - len(warm) : WARMUP_SAMPLES] = warm
        row[WARMUP_SAMPLES:] = block
        with torch.inference_mode():
            probs = self.model.audio_forward(torch.from_numpy(row)[None], SAMPLE_RATE)
        return probs[0, WARMUP_SAMPLES // VAD_FRAME :].float().numpy()

    def silences(
        self,
        samples: np.ndarray,
        threshold: float = 0.5,
        min_silence_s: float = 0.2,
    ) -> list[tuple[int, int]]:
        """Silences ``[(start, end)]`` in samples, sorted, each ``>= min_silence_s`` long."""
        return find_silences(
            self.speech_probabilities(samples), len(samples), threshold, min_silence_s
        )


def find_silences(
    probs: np.ndarray,
    num_samples: int,
    threshold: float = 0.5,
    min_silence_s: float = 0.2,
) -> list[tuple[int, int]]:
    """Non-speech runs from per-VAD-frame ``probs [ceil(T / 512)]``, in samples.

    Hysteresis as in silero's own post-processing: speech starts at ``p >= threshold``
    and lasts until ``p < threshold - 0.15``.
    """
    off = max(threshold - 0.15, 0.01)
    speech = np.zeros(len(probs), dtype=bool)
    active = False
    for k, p in enumerate(probs.tolist()):
        active = p >= threshold or (active and p >= off)
        speech[k] = active
    min_len = int(min_silence_s * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    # Edges of the non-speech runs.
    edges = np.flatnonzero(np.diff(np.concatenate([[True], speech, [True]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        start, end = int(a) * VAD_FRAME, min(int(b) * VAD_FRAME, num_samples)
        if end - start >= min_len:
            out.append((start, end))
    return out


def plan_pieces(
    num_samples: int,
    silences: Sequence[tuple[int, int]],
    window: int,
    overlap: int,
    frame: int,
    skip_silence: int = 0,
) -> list[Chunk]:
    """Pieces of at most ``window`` samples cut at the middle of ``silences``.

    Kept spans partition the utterance's frames exactly, as ``plan_chunks``'s do, so
    :func:`service.chunking.stitch` joins the pieces' logits into utterance time. Where a
    stretch longer than the window has no silence, it gets ``plan_chunks``'s overlapping
    windows (``overlap`` samples). With ``skip_silence`` > 0, silences at least that long
    are cut ``SKIP_PAD`` inside their edges too, and pieces wholly inside one are ``silent``.
    """
    if num_samples <= 0:
        raise ValueError("num_samples must be positive")
    if not 0 <= overlap < window:
        raise ValueError("overlap must be in [0, window)")
    window = max(2 * frame, window - window % frame)
    if num_samples <= window:
        return [Chunk(0, 0, num_samples, 0, None, frame)]
    long = [(s, e) for s, e in silences if skip_silence > 0 and e - s >= skip_silence]
    points = [(s + e) // 2 for s, e in silences]
    points += [p for s, e in long for p in (s + SKIP_PAD, e - SKIP_PAD)]
    cuts = sorted({c for p in points if 0 < (c := p // frame * frame) < num_samples})
    spans: list[tuple[int, int, int, int | None]] = []  # start, end, keep_start, keep_end
    pos = 0
    while num_samples - pos > window:
        # The piece [pos, cut + FRAME) must fit the window.
        fitting = [c for c in cuts if pos + MIN_PIECE_SAMPLES <= c <= pos + window - frame]
        if fitting:
            cut = fitting[-1]
            spans.append((pos, cut + frame, pos // frame, cut // frame))
            pos = cut
            continue
        # No silence within reach: overlapping windows up to the next cut (or the end).
        later = [c for c in cuts if c > pos + window - frame]
        stop = later[0] if later else num_samples
        end = min(stop + frame, num_samples)
        windows = plan_chunks(end - pos, window, overlap, frame)
        offset = pos // frame
        for i, w in enumerate(windows):
            last = i == len(windows) - 1
            keep_end = w.keep_end + offset if w.keep_end is not None else None
            if last and stop < num_samples:
                keep_end = stop // frame
            spans.append((w.start + pos, w.end + pos, w.keep_start + offset, keep_end))
        pos = stop
    if pos < num_samples:
        spans.append((pos, num_samples, pos // frame, None))
    return [
        Chunk(i, *span, frame, silent=any(s <= span[0] and span[1] <= e for s, e in long))
        for i, span in enumerate(spans)
    ]


def load_vad() -> SileroVad | None:
    """silero-vad for streams and long audio; None when it cannot be loaded (logged: long
    audio then falls back to overlapping windows and streams are refused)."""
    try:
        return SileroVad.load()
    except Exception as exc:
        log.warning(
            "silero-vad could not be loaded (%s: %s); long audio is cut into overlapping "
            "windows instead, and streaming is off",
            type(exc).__name__,
            exc,
        )
        return None
