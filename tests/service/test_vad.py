"""Long audio cut at silences (silero-vad): plans, real speech, the engine path, fallback."""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.config import FRAME_STRIDE as FRAME_SAMPLES
from service.chunking import Chunk, stitch
from service.engine import Engine
from service.settings import Settings
from service.vad import SKIP_PAD, SileroVad, load_vad, plan_pieces
from service.worker import AsrOutput
from tests.conftest import REPO, Utterance

SR = 16_000


def conv_frames(num_samples: int) -> int:
    """Frames a wav2vec 2.0 feature encoder yields (receptive field 400, stride 320)."""
    return (num_samples - 400) // FRAME_SAMPLES + 1


def check_plan(chunks: Sequence[Chunk], num_samples: int, window: int) -> None:
    """Pieces fit the window, and stitching gives every utterance frame once, in order."""
    assert chunks[0].start == 0 and chunks[-1].end == num_samples
    assert all(c.end - c.start <= window for c in chunks)
    assert all(c.start % FRAME_SAMPLES == 0 for c in chunks)
    logits = [
        np.arange(c.frame_offset, c.frame_offset + conv_frames(c.end - c.start), dtype=np.float32)[
            :, None
        ]
        for c in chunks
    ]
    joined = stitch(chunks, logits)
    np.testing.assert_array_equal(joined[:, 0], np.arange(conv_frames(num_samples)))


def cuts(chunks: Sequence[Chunk]) -> list[int]:
    """Where one piece's kept span hands over to the next, in samples."""
    return [c.keep_end * FRAME_SAMPLES for c in chunks[:-1] if c.keep_end is not None]


# ------------------------------------------------------------ planning (no model)
def test_pieces_cut_at_the_middle_of_silences() -> None:
    n, window = 70 * SR, 30 * SR
    silences = [(9 * SR, 10 * SR), (25 * SR, 26 * SR), (40 * SR, 41 * SR), (52 * SR, 54 * SR)]
    chunks = plan_pieces(n, silences, window, 2 * SR, FRAME_SAMPLES)
    check_plan(chunks, n, window)
    # Greedy: the latest silence that keeps a piece within 30 s.
    assert cuts(chunks) == [int(25.5 * SR), 53 * SR]
    for a, b in itertools.pairwise(chunks):
        assert a.keep_end is not None and a.keep_end * FRAME_SAMPLES == b.start
        assert a.end - b.start == FRAME_SAMPLES  # one frame of silence past the cut
    assert chunks[0].keep_start == 0 and chunks[-1].keep_end is None


def test_short_audio_is_one_piece() -> None:
    assert plan_pieces(5 * SR, [(SR, 2 * SR)], 30 * SR, 2 * SR, 320) == [
        Chunk(0, 0, 5 * SR, 0, None, 320)
    ]


@pytest.mark.parametrize(
    "silences",
    [
        [],  # no silence at all: plain overlapping windows
        [(5 * SR, 6 * SR)],  # then 94 s of speech
        [(5 * SR, 6 * SR), (70 * SR, 71 * SR)],  # a 64 s speech run in the middle
    ],
)
def test_speech_longer_than_the_window_falls_back_to_overlapping_windows(
    silences: list[tuple[int, int]],
) -> None:
    n, window = 100 * SR + 123, 30 * SR
    chunks = plan_pieces(n, silences, window, 2 * SR, FRAME_SAMPLES)
    check_plan(chunks, n, window)
    # Overlap (beyond the one frame past a cut) only where no silence was in reach.
    overlapping = [b.start for a, b in itertools.pairwise(chunks) if a.end - b.start > 320]
    assert overlapping
    for start in overlapping:
        assert not any(s <= start < e for s, e in silences)


def test_long_silences_become_silent_pieces_that_keep_context_beside_speech() -> None:
    n, window = 1800 * SR, 30 * SR
    # Speech in [0, 20 s) and [1770 s, 1800 s), 29 minutes of silence between, plus a
    # short pause that must stay an ordinary cut.
    silences = [(8 * SR, 9 * SR), (20 * SR, 1770 * SR)]
    chunks = plan_pieces(n, silences, window, 2 * SR, FRAME_SAMPLES, skip_silence=3 * SR)
    check_plan(chunks, n, window)
    silent = [c for c in chunks if c.silent]
    spoken = [c for c in chunks if not c.silent]
    assert sum(c.end - c.start for c in silent) > 1700 * SR  # what the model no longer runs
    assert len(spoken) <= 3
    for c in silent:  # wholly inside the long silence
        assert c.start >= 20 * SR and c.end <= 1770 * SR
    # Speech keeps SKIP_PAD of silence as context on each side.
    assert any(c.start <= 20 * SR and c.end >= 20 * SR + SKIP_PAD for c in spoken)
    assert any(c.start <= 1770 * SR - SKIP_PAD and c.end >= 1770 * SR for c in spoken)
    # Without skip_silence the same silences cut as before and nothing is silent.
    plain = plan_pieces(n, silences, window, 2 * SR, FRAME_SAMPLES)
    assert not any(c.silent for c in plain)
    # The short pause is not skipped.
    assert not any(c.silent and c.start < 10 * SR for c in chunks)


# ------------------------------------------------------------ real speech
def long_speech(
    speech: dict[str, list[Utterance]], gaps_s: Sequence[float]
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every fixture utterance in turn with silences between; returns the audio and each
    utterance's ``(start, end)`` in samples."""
    clips = [u for lang in sorted(speech) for u in speech[lang]]
    parts: list[np.ndarray] = []
    regions: list[tuple[int, int]] = []
    pos = 0
    for clip, gap in zip(clips, itertools.cycle(gaps_s), strict=False):
        audio, rate = sf.read(clip.path, dtype="float32")
        assert rate == SR
        regions.append((pos, pos + len(audio)))
        parts += [audio, np.zeros(int(gap * SR), dtype=np.float32)]
        pos += len(audio) + int(gap * SR)
    return np.concatenate(parts[:-1]), regions


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad.load()


def test_real_speech_is_cut_inside_the_silences(
    speech: dict[str, list[Utterance]], vad: SileroVad
) -> None:
    audio, regions = long_speech(speech, [0.6, 1.1, 0.8])
    window = 5 * SR
    assert len(audio) > 3 * window
    chunks = plan_pieces(len(audio), vad.silences(audio), window, SR, FRAME_SAMPLES)
    check_plan(chunks, len(audio), window)
    assert len(chunks) >= 4
    gaps = [(a[1], b[0]) for a, b in itertools.pairwise(regions)]
    for cut in cuts(chunks):
        # Inside a gap between utterances, with the extra frame of input still in it.
        assert any(s < cut and cut + FRAME_SAMPLES <= e for s, e in gaps), cut / SR
    # No overlapping windows were needed: every hand-over is a cut in a silence.
    assert all(a.end - b.start == FRAME_SAMPLES for a, b in itertools.pairwise(chunks))


def test_importing_silero_keeps_torch_thread_count() -> None:
    code = (
        "import sys, threading, torch\n"
        "torch.set_num_threads(3)\n"
        "import service.vad\n"
        "assert 'silero_vad' not in sys.modules  # imported lazily\n"
        "service.vad.SileroVad.load()\n"
        "assert 'silero_vad' in sys.modules\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))\n"
        "t.start(); t.join()\n"
        "assert (torch.get_num_threads(), seen) == (3, [3]), (torch.get_num_threads(), seen)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_fallback_to_windows_when_silero_cannot_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # import silero_vad -> ImportError
    with caplog.at_level(logging.WARNING, logger="lass.vad"):
        assert load_vad() is None
    assert "overlapping windows" in caplog.text


# ------------------------------------------------------------ the engine path
def energy_logits(vocab_size: int, char: int, wave: np.ndarray) -> np.ndarray:
    """Stand-in model output ``[F, V]``: ``char`` on frames with sound, space elsewhere.

    It sees only its own piece, so wrong piece offsets would move the words.
    """
    frames = conv_frames(len(wave))
    energy = np.array([np.mean(wave[k * 320 : k * 320 + 400] ** 2) for k in range(frames)])
    logits = np.zeros((frames, vocab_size), dtype=np.float32)
    logits[np.arange(frames), np.where(energy > 1e-4, char, 1)] = 10.0
    return logits


@dataclass
class EngineRun:
    """What the engine made of a long recording under the energy stand-in model."""

    words: list[tuple[float, float]]
    batches: int
    samples_run: int  # samples that went through the (stand-in) model


async def engine_words(bundle: Path, audio: np.ndarray, **settings: object) -> EngineRun:
    """Transcribe ``audio`` (en) with an engine whose model is :func:`energy_logits`."""
    engine = Engine(Settings(bundle=bundle, torch_threads=1, warmup=False, **settings))  # type: ignore[arg-type]
    await engine.start()
    await engine.wait_ready()
    assert engine.worker is not None
    vocab = engine.worker.bundle.vocab
    char = vocab.tokens.index("e")
    ran: list[int] = []

    def fake_asr(waves: Sequence[np.ndarray], languages: Sequence[str]) -> list[AsrOutput]:
        ran.extend(len(w) for w in waves)
        return [AsrOutput(energy_logits(len(vocab), char, w)) for w in waves]

    engine.worker.run_asr = fake_asr  # type: ignore[method-assign]
    try:
        result = await engine.transcribe(audio, "en")
    finally:
        await engine.stop()
    assert result.transcript.duration == pytest.approx(len(audio) / SR, abs=0.03)
    words = [(w.start, w.end) for w in result.transcript.words]
    return EngineRun(words, len(result.batches), sum(ran))


def test_engine_words_land_in_utterance_time(
    speech: dict[str, list[Utterance]], tiny_bundle: Path
) -> None:
    audio, regions = long_speech(speech, [0.7, 1.0])

    async def main() -> None:
        whole = await engine_words(tiny_bundle, audio, chunk_seconds=60.0)
        vad = await engine_words(tiny_bundle, audio, chunk_seconds=5.0, long_audio_split="vad")
        windows = await engine_words(
            tiny_bundle,
            audio,
            chunk_seconds=5.0,
            chunk_overlap_seconds=1.0,
            long_audio_split="windows",
        )
        assert whole.batches == 1 and vad.batches >= 4 and windows.batches >= 4
        assert vad.words == whole.words  # same words at the same times as one pass
        assert windows.words == whole.words
        for start, end in vad.words:
            assert any(s / SR - 0.03 <= start <= end <= e / SR + 0.03 for s, e in regions)
        for s, e in regions:  # every utterance got words
            assert any(s / SR - 0.03 <= start <= e / SR for start, _ in vad.words)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_engine_skips_long_silences_with_the_same_words(
    speech: dict[str, list[Utterance]], tiny_bundle: Path
) -> None:
    audio, regions = long_speech(speech, [4.0, 0.7, 6.0])

    async def main() -> None:
        split = {"chunk_seconds": 5.0, "long_audio_split": "vad"}
        everything = await engine_words(tiny_bundle, audio, skip_silence_s=0.0, **split)
        skipping = await engine_words(tiny_bundle, audio, skip_silence_s=2.0, **split)
        assert skipping.words == everything.words  # the same words at the same times
        # The 4 s and 6 s gaps, less a quarter second of context on each side, not run.
        skipped = everything.samples_run - skipping.samples_run
        assert skipped >= int((4.0 + 6.0 - 4 * SKIP_PAD / SR - 1.0) * SR)
        for s, e in regions:
            assert any(s / SR - 0.03 <= start <= e / SR for start, _ in skipping.words)

    asyncio.run(asyncio.wait_for(main(), 120))
