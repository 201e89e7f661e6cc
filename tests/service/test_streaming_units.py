"""Streaming parts that need no server: the endpointer, the PCM front end, and one session
driven by a stand-in engine (energy for voice activity, a constant per-frame output for the
model) so bounded work, event order and memory can be checked exactly."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

from model.audio import (
    InvalidAudioError,
    InvalidAudioParameterError,
    PcmConverter,
    PcmFormat,
    UnsupportedAudioError,
)
from model.decoding import Transcript, Word
from service.engine import DecodeOptions, TranscriptionResult
from service.streaming.endpointer import (
    VAD_FRAME,
    EndpointConfig,
    Endpointer,
    SpeechEnded,
    SpeechStarted,
)
from service.streaming.session import (
    Final,
    Partial,
    SpeechStopped,
    StreamEvent,
    StreamOptions,
    StreamSession,
)
from service.streaming.session import SpeechStarted as StreamSpeechStarted

RATE = 16_000


# ------------------------------------------------------------ endpointer
def frames(ms: float) -> int:
    return round(ms * RATE / 1000 / VAD_FRAME)


def test_utterance_starts_after_min_speech_with_prefix_padding_and_ends_after_silence() -> None:
    config = EndpointConfig(silence_ms=320, prefix_padding_ms=320, min_speech_ms=96, tail_ms=64)
    ep = Endpointer(config)
    assert ep.push([0.0] * 50) == []
    events = ep.push([0.9, 0.9])
    assert events == []  # 64 ms of speech: not yet 96
    events = ep.push([0.9])
    assert events == [SpeechStarted(50 * VAD_FRAME - 5120)]
    # A dip above threshold - 0.15 stays speech (hysteresis); 9 frames (288 ms) of
    # silence are not enough, the tenth (320 ms) ends it.
    assert ep.push([0.4] * 3 + [0.9] * 10 + [0.1] * 9) == []
    (end,) = ep.push([0.1])
    assert isinstance(end, SpeechEnded) and not end.forced
    assert end.start == 50 * VAD_FRAME - 5120
    last_speech = 50 + 3 + 3 + 10 - 1
    assert end.end == (last_speech + 1) * VAD_FRAME + 1024  # + tail_ms
    assert ep.utterance_start is None


def test_prefix_padding_never_reaches_into_the_previous_utterance() -> None:
    ep = Endpointer(EndpointConfig(silence_ms=64, prefix_padding_ms=1000, min_speech_ms=32))
    first = ep.push([0.9] * 5 + [0.0] * 2)
    assert isinstance(first[-1], SpeechEnded)
    (started,) = ep.push([0.9])
    assert isinstance(started, SpeechStarted)
    assert started.start == first[-1].end  # not 1 s before the speech


def test_long_speech_is_cut_at_max_utterance_and_goes_on() -> None:
    ep = Endpointer(EndpointConfig(max_utterance_s=1.0, min_speech_ms=32, prefix_padding_ms=0))
    events = ep.push([0.9] * frames(2600))
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "SpeechStarted",
        "SpeechEnded",
        "SpeechStarted",
        "SpeechEnded",
        "SpeechStarted",
    ]
    cuts = [e for e in events if isinstance(e, SpeechEnded)]
    assert all(c.forced and c.end - c.start <= RATE + VAD_FRAME for c in cuts)
    assert cuts[1].start == cuts[0].end  # no gap, no overlap
    tail = ep.flush()
    assert tail is not None and tail.start == cuts[1].end and tail.end == ep.position


def test_reset_forgets_the_open_utterance() -> None:
    ep = Endpointer(EndpointConfig(min_speech_ms=32))
    ep.push([0.9] * 5)
    assert ep.utterance_start is not None
    ep.reset()
    assert ep.utterance_start is None and ep.flush() is None


def test_endpoint_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        EndpointConfig(threshold=1.5)
    with pytest.raises(ValueError):
        EndpointConfig(max_utterance_s=0.2)


# ------------------------------------------------------------ PCM front end
def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


def test_s16_and_f32_frames_give_the_same_samples() -> None:
    x = tone(0.5, RATE)[:, 0]
    s16 = PcmConverter(PcmFormat.parse("pcm16", RATE)).convert((x * 32767).astype("<i2").tobytes())
    f32 = PcmConverter(PcmFormat.parse("float32", RATE)).convert(x.astype("<f4").tobytes())
    assert np.abs(s16 - f32).max() < 1e-3


def test_resampling_in_frames_equals_resampling_at_once() -> None:
    x = tone(1.0, 48_000, channels=2)
    data = x.astype("<f4").tobytes()
    whole = PcmConverter(PcmFormat.parse("pcm_f32le", 48_000, 2))
    at_once = np.concatenate([whole.convert(data), whole.flush()])
    framed = PcmConverter(PcmFormat.parse("pcm_f32le", 48_000, 2))
    step = 4800 * 8  # 100 ms of stereo float32
    parts = [framed.convert(data[i : i + step]) for i in range(0, len(data), step)]
    in_frames = np.concatenate([*parts, framed.flush()])
    assert len(at_once) == len(in_frames) == RATE
    np.testing.assert_allclose(at_once, in_frames, atol=1e-5)


def test_stereo_is_averaged() -> None:
    left = np.full(160, 0.5, dtype=np.float32)
    right = np.full(160, -0.1, dtype=np.float32)
    data = np.stack([left, right], axis=1).astype("<f4").tobytes()
    out = PcmConverter(PcmFormat.parse("f32le", RATE, 2)).convert(data)
    np.testing.assert_allclose(out, 0.2, atol=1e-6)


def test_g711_matches_the_standard_tables() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the standard library's G.711 codec (removed in Python 3.13)
    data = bytes(range(256))
    for encoding, decode in (("pcmu", audioop.ulaw2lin), ("pcma", audioop.alaw2lin)):
        expected = np.frombuffer(decode(data, 2), dtype="<i2").astype(np.float32) / 32768
        got = PcmConverter(PcmFormat.parse(encoding, RATE)).convert(data)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("encoding", "rate", "channels"),
    [("mp3", RATE, 1), ("pcm16", 4_000, 1), ("pcm16", 400_000, 1), ("pcm16", RATE, 9)],
)
def test_unsupported_formats_are_refused_with_what_is_accepted(
    encoding: str, rate: int, channels: int
) -> None:
    with pytest.raises(InvalidAudioParameterError, match="use one of|must be"):
        PcmFormat.parse(encoding, rate, channels)


def test_bad_frames_are_refused() -> None:
    with pytest.raises(UnsupportedAudioError, match="not a whole number"):
        PcmConverter(PcmFormat.parse("pcm16", RATE)).convert(b"\x00\x01\x02")
    nan = np.array([0.0, np.nan], dtype="<f4").tobytes()
    with pytest.raises(InvalidAudioError, match="NaN"):
        PcmConverter(PcmFormat.parse("float32", RATE)).convert(nan)


# ------------------------------------------------------------ the session
@dataclass
class FakeEngine:
    """Voice activity from energy; the model emits one symbol per voiced frame."""

    frame_samples: int = 320
    windows: list[int] = field(default_factory=list)  # samples of every partial window
    finals: list[int] = field(default_factory=list)  # samples of every final
    vad_blocks: list[int] = field(default_factory=list)

    async def speech_probabilities(self, context: np.ndarray, block: np.ndarray) -> np.ndarray:
        self.vad_blocks.append(len(block))
        rms = np.sqrt((block.reshape(-1, VAD_FRAME) ** 2).mean(axis=1))
        return (rms > 0.05).astype(np.float32)

    def _logits(self, samples: np.ndarray) -> np.ndarray:
        n = (len(samples) - 400) // 320 + 1
        voiced = np.array([np.abs(samples[i * 320 : i * 320 + 400]).max() > 0.05 for i in range(n)])
        logits = np.zeros((n, 2), dtype=np.float32)
        logits[voiced, 1] = 1.0
        logits[~voiced, 0] = 1.0
        return logits

    async def stream_logits(
        self, samples: np.ndarray, language: str, request_id: str
    ) -> np.ndarray:
        self.windows.append(len(samples))
        await asyncio.sleep(0)
        return self._logits(samples)

    async def identify(self, samples: np.ndarray, request_id: str = "") -> tuple[str, float]:
        return "de", 0.9

    async def greedy(self, logits: np.ndarray, language: str) -> Transcript:
        # One character per frame (no CTC collapsing): shows exactly what the running
        # logits hold, so gaps or repeats between partial windows would show.
        text = "".join("a" if row[1] > row[0] else "_" for row in logits)
        return Transcript(text, language, [], len(logits) * 0.02)

    async def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        options: DecodeOptions = DecodeOptions(),
        request_id: str = "",
    ) -> TranscriptionResult:
        self.finals.append(len(samples))
        words = [Word("x", 0.0, len(samples) / RATE)]
        seconds = len(samples) / RATE
        return TranscriptionResult(
            Transcript("x", language or "de", words, seconds), language or "de", seconds
        )


def speech_with_pauses(utterances: list[float], pause: float = 1.0) -> np.ndarray:
    """Noise bursts (speech stand-ins) of the given lengths between silences."""
    rng = np.random.default_rng(0)
    parts = [np.zeros(int(pause * RATE), dtype=np.float32)]
    for seconds in utterances:
        parts.append((0.3 * rng.standard_normal(int(seconds * RATE))).astype(np.float32))
        parts.append(np.zeros(int(pause * RATE), dtype=np.float32))
    return np.concatenate(parts)


async def run_session(
    audio: np.ndarray, options: StreamOptions, frame_s: float = 0.1
) -> tuple[FakeEngine, StreamSession, list[StreamEvent], int]:
    engine = FakeEngine()
    events: list[StreamEvent] = []

    async def emit(event: StreamEvent) -> None:
        events.append(event)

    session = StreamSession(engine, options, emit, "test")
    step = int(frame_s * RATE)
    biggest = 0
    for i in range(0, len(audio), step):
        await session.feed(audio[i : i + step])
        await asyncio.sleep(0)  # let partial tasks run, as the event loop would
        biggest = max(biggest, len(session._buf))
    await session.finish()
    return engine, session, events, biggest


def test_partials_stay_bounded_however_long_the_utterance() -> None:
    options = StreamOptions(language="de", endpoint=EndpointConfig(max_utterance_s=60))
    audio = speech_with_pauses([50.0])
    engine, _, events, _ = asyncio.run(run_session(audio, options))
    bound = (options.partial_context_s + 0.2 + options.partial_interval_s + 0.2) * RATE
    assert len(engine.windows) > 50
    assert max(engine.windows) <= bound, max(engine.windows) / RATE
    partials = [e for e in events if isinstance(e, Partial)]
    assert len(partials) > 50
    for p in partials:  # the running logits cover the utterance frame by frame
        samples = round((p.end - p.start) * RATE)
        assert len(p.text) == (samples - 400) // 320 + 1
        assert "_a" not in p.text.strip("_")  # one voiced run: no silent frame inside it
    assert engine.finals == [pytest.approx(50.5 * RATE, abs=0.4 * RATE)]


def test_events_come_in_order_and_memory_holds_only_the_open_utterance() -> None:
    options = StreamOptions(language=None, endpoint=EndpointConfig(max_utterance_s=5))
    audio = speech_with_pauses([1.5, 0.6, 2.5] * 10, pause=0.8)
    engine, session, events, biggest = asyncio.run(run_session(audio, options))
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.utterance for f in finals] == list(range(30))
    assert all(f.language == "de" for f in finals)
    # Every utterance's partials come after its speech start and before its final.
    seen_final: set[int] = set()
    started: set[int] = set()
    for e in events:
        if isinstance(e, StreamSpeechStarted):
            started.add(e.utterance)
        elif isinstance(e, Partial):
            assert e.utterance in started and e.utterance not in seen_final
            assert all(u < e.utterance for u in seen_final)
        elif isinstance(e, Final):
            seen_final.add(e.utterance)
    stops = [e.utterance for e in events if isinstance(e, SpeechStopped)]
    assert stops == list(range(30))
    # Timestamps are on the stream's clock: utterance k starts after utterance k-1 ends.
    assert all(b.start >= a.end for a, b in itertools.pairwise(finals))
    assert finals[-1].end <= len(audio) / RATE
    assert biggest <= (5 + 1.0 + 0.6) * RATE  # max utterance + warm-up/padding + one frame
    assert session.stats.utterances == 30


def test_without_vad_utterances_end_at_commit() -> None:
    async def run() -> list[StreamEvent]:
        engine = FakeEngine()
        events: list[StreamEvent] = []

        async def emit(event: StreamEvent) -> None:
            events.append(event)

        session = StreamSession(engine, StreamOptions(language="de", vad=False), emit)
        audio = speech_with_pauses([1.0], pause=0.5)
        await session.feed(audio)
        await session.commit()
        await session.feed(audio[: RATE // 2])
        await session.clear()  # dropped unheard
        await session.finish()
        assert engine.finals == [len(audio)]
        return events

    events = asyncio.run(run())
    assert [type(e).__name__ for e in events if not isinstance(e, Partial)] == [
        "SpeechStopped",
        "Final",
    ]
