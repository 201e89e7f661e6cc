"""Endpointing: speech probabilities per VAD frame in, utterance boundaries out.

A pure state machine (no torch, no clock): the stream feeds it silero-vad's probability of
each consecutive VAD frame (512 samples at 16 kHz, 32 ms) and it says where utterances
start and end, in samples on the stream's clock.

- Hysteresis as silero's own post-processing: a frame is speech at ``p >= threshold`` and
  stays speech while ``p >= threshold - 0.15``.
- An utterance starts once ``min_speech_ms`` of consecutive speech frames were seen; its
  audio begins ``prefix_padding_ms`` before the first of them (never before the end of the
  previous utterance), so the first phone is not clipped.
- It ends after ``silence_ms`` of non-speech; its audio runs ``tail_ms`` past the last
  speech frame (CTC emits a word's last characters a few frames after it ends).
- It is cut at ``max_utterance_s`` however long the speaker talks (bounded work per final);
  speech that goes on starts the next utterance at the cut, with no padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from model.config import SAMPLE_RATE

VAD_FRAME = 512  # silero-vad's frame at 16 kHz


@dataclass(frozen=True)
class EndpointConfig:
    """How utterances are cut (the OpenAI Realtime ``server_vad`` knobs and ours)."""

    threshold: float = 0.5
    silence_ms: int = 400
    prefix_padding_ms: int = 300
    min_speech_ms: int = 150
    tail_ms: int = 200
    max_utterance_s: float = 20.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if self.silence_ms < 0 or self.prefix_padding_ms < 0 or self.min_speech_ms < 0:
            raise ValueError("silence_ms, prefix_padding_ms and min_speech_ms must be >= 0")
        if self.tail_ms < 0:
            raise ValueError("tail_ms must be >= 0")
        if self.max_utterance_s < 1.0:
            raise ValueError("max_utterance_s must be >= 1 s")

    def frames(self, ms: float) -> int:
        """Whole VAD frames in ``ms`` milliseconds (at least one where ``ms`` > 0)."""
        return -(-int(ms * SAMPLE_RATE / 1000) // VAD_FRAME)


@dataclass(frozen=True)
class SpeechStarted:
    """An utterance began at sample ``start`` (prefix padding included)."""

    start: int


@dataclass(frozen=True)
class SpeechEnded:
    """The utterance ``[start, end)`` is over; ``forced`` when ``max_utterance_s`` cut it."""

    start: int
    end: int
    forced: bool = False


Event = SpeechStarted | SpeechEnded


class Endpointer:
    """Cuts one stream into utterances; see the module docstring for the rules."""

    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        c = self.config
        self._off = max(c.threshold - 0.15, 0.01)
        self._silence_frames = max(1, c.frames(c.silence_ms))
        self._min_speech = max(1, c.frames(c.min_speech_ms))
        self._prefix = int(c.prefix_padding_ms * SAMPLE_RATE / 1000)
        self._tail = int(c.tail_ms * SAMPLE_RATE / 1000)
        self._max = int(c.max_utterance_s * SAMPLE_RATE)
        self.frames = 0  # VAD frames seen so far
        self._active = False  # hysteresis state of the last frame
        self._run_start: int | None = None  # first frame of the current speech run
        self._start: int | None = None  # sample where the open utterance starts
        self._last_speech = 0  # last speech frame of the open utterance
        self._floor = 0  # no utterance may start before this sample

    @property
    def position(self) -> int:
        """Samples covered by the frames seen so far."""
        return self.frames * VAD_FRAME

    @property
    def utterance_start(self) -> int | None:
        """Start sample of the open utterance, or None between utterances."""
        return self._start

    def push(self, probabilities: Iterable[float]) -> list[Event]:
        """Advance over the next VAD frames' speech probabilities; events in order."""
        events: list[Event] = []
        for p in probabilities:
            k = self.frames
            self.frames += 1
            self._active = p >= self.config.threshold or (self._active and p >= self._off)
            if self._start is None:
                self._idle(k, events)
            else:
                self._speaking(k, events)
        return events

    def _idle(self, k: int, events: list[Event]) -> None:
        if not self._active:
            self._run_start = None
            return
        if self._run_start is None:
            self._run_start = k
        if k - self._run_start + 1 >= self._min_speech:
            self._start = max(self._floor, self._run_start * VAD_FRAME - self._prefix)
            self._last_speech = k
            self._run_start = None
            events.append(SpeechStarted(self._start))

    def _speaking(self, k: int, events: list[Event]) -> None:
        assert self._start is not None
        if self._active:
            self._last_speech = k
        elif k - self._last_speech >= self._silence_frames:
            end = min((self._last_speech + 1) * VAD_FRAME + self._tail, self.position)
            events.append(self._close(end, forced=False))
            return
        if self.position - self._start >= self._max:
            start = self.position
            events.append(self._close(start, forced=True))
            if self._active:  # the speaker goes on: the next utterance starts at the cut
                self._start = start
                self._last_speech = k
                events.append(SpeechStarted(start))

    def _close(self, end: int, forced: bool) -> SpeechEnded:
        assert self._start is not None
        event = SpeechEnded(self._start, end, forced)
        self._start = None
        self._run_start = None
        self._floor = end
        return event

    def flush(self) -> SpeechEnded | None:
        """End the open utterance at the current position (end of stream or a commit)."""
        if self._start is None:
            return None
        return self._close(self.position, forced=False)

    def reset(self) -> None:
        """Forget the open utterance (the client cleared its buffer)."""
        self._start = None
        self._run_start = None
        self._active = False
        self._floor = self.position
