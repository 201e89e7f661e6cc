"""One stream's audio to partial and final transcripts, through the shared engine.

The session is independent of the wire protocol: a router feeds it 16 kHz samples
(:meth:`StreamSession.feed`), forwards control messages (:meth:`commit`, :meth:`clear`,
:meth:`finish`) and turns the events it emits (:class:`SpeechStarted`, :class:`Partial`,
:class:`Final`, :class:`StreamError`) into its protocol's messages.

How the work stays bounded however long a stream runs:

- Voice activity (silero-vad) runs on each new block of ``vad_block`` samples with a fixed
  warm-up of the audio before it; the endpointer (:mod:`service.streaming.endpointer`)
  cuts utterances of at most ``max_utterance_s``.
- A **partial** recomputes only the utterance's newest frames: one window of
  ``partial_context_s`` of left context, the last ``redo`` frames of the previous partial
  (they lacked right context) and the new audio, submitted as one work item to the same
  batcher as file requests, so streams of every language share mixed-language batches.
  Its logits replace the tail of the utterance's running logits, which are greedy-decoded.
  At most one partial per stream is in flight; a stream that falls behind skips partials,
  never queues them.
- A **final** transcribes the whole utterance exactly as ``POST /v1/audio/transcriptions``
  would (the same engine call), so its text equals the REST transcript of that audio.
- Without a language, the utterance's language is identified once ``lid_seconds`` of it
  have arrived (partials wait for it); the final identifies it on the whole utterance,
  as REST does.
- Only the open utterance's audio (plus the VAD warm-up and prefix padding) is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from model.config import SAMPLE_RATE
from model.decoding import Transcript, Word
from service.engine import DecodeOptions, TranscriptionResult
from service.engine_errors import stream_error_code
from service.streaming.endpointer import VAD_FRAME, EndpointConfig, Endpointer
from service.streaming.endpointer import SpeechStarted as _VadStarted

log = logging.getLogger("lass.stream")

VAD_WARMUP = 16 * VAD_FRAME  # 0.512 s of audio before each VAD block, as in service/vad.py


class StreamEngine(Protocol):
    """What a session needs of :class:`service.engine.Engine`."""

    @property
    def frame_samples(self) -> int: ...

    async def stream_logits(
        self, samples: np.ndarray, language: str, request_id: str
    ) -> np.ndarray:
        """Logits ``[F, V]`` of one window through the batcher (F = frames of ``samples``)."""
        ...

    async def identify(self, samples: np.ndarray, request_id: str = "") -> tuple[str, float]: ...

    async def greedy(self, logits: np.ndarray, language: str) -> Transcript: ...

    async def speech_probabilities(self, context: np.ndarray, block: np.ndarray) -> np.ndarray:
        """Speech probability of each VAD frame of ``block`` after ``context`` warm-up."""
        ...

    async def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        options: DecodeOptions = ...,
        request_id: str = "",
    ) -> TranscriptionResult: ...


@dataclass(frozen=True)
class StreamOptions:
    """A stream's settings, from its start message or Realtime session."""

    language: str | None = None  # None: identify each utterance's language
    partials: bool = True
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    vad: bool = True  # False: utterances end only at commit (Realtime turn_detection null)
    partial_interval_s: float = 0.5
    partial_context_s: float = 1.0
    lid_seconds: float = 1.0
    vad_block_s: float = 0.256


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class SpeechStarted:
    utterance: int
    start: float  # seconds on the stream's clock (prefix padding included)


@dataclass(frozen=True)
class SpeechStopped:
    utterance: int
    end: float


@dataclass(frozen=True)
class Partial:
    utterance: int
    text: str
    language: str
    start: float
    end: float  # the audio this hypothesis covers


@dataclass(frozen=True)
class Final:
    utterance: int
    text: str
    language: str
    language_probability: float | None
    start: float
    end: float
    words: list[Word]
    forced: bool  # cut at max_utterance_s (or a commit) rather than at a silence
    latency_s: float  # from the audio that closed the utterance to this event


@dataclass(frozen=True)
class StreamError:
    """Something failed for one utterance (the stream goes on)."""

    code: str
    message: str
    utterance: int | None = None


StreamEvent = SpeechStarted | SpeechStopped | Partial | Final | StreamError
Emit = Callable[[StreamEvent], Awaitable[None]]


class StreamMetricsSink(Protocol):
    def observe_partial_latency(self, seconds: float) -> None: ...

    def observe_final_latency(self, seconds: float) -> None: ...

    def add_stream_audio(self, language: str, seconds: float) -> None: ...


@dataclass
class _Utterance:
    index: int
    start: int  # sample on the stream clock
    language: str | None
    language_probability: float | None = None
    logits: np.ndarray | None = None  # running logits [F, V] of the partials, from ``start``
    covered: int = 0  # samples (from ``start``) the running logits cover
    text: str = ""


@dataclass
class StreamStats:
    utterances: int = 0
    partials: int = 0
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0
    errors: int = 0
    languages: dict[str, int] = field(default_factory=dict)


class StreamSession:
    """See the module docstring. Methods run on the event loop, one caller at a time."""

    def __init__(
        self,
        engine: StreamEngine,
        options: StreamOptions,
        emit: Emit,
        stream_id: str = "",
        metrics: StreamMetricsSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.options = options
        self._emit = emit
        self.stream_id = stream_id
        self.metrics = metrics
        self._clock = clock
        self.endpointer = Endpointer(options.endpoint)
        self.stats = StreamStats()
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample of _buf[0]
        self._pos = 0  # samples received
        self._vad_pos = 0  # samples the VAD has seen
        self._block = max(
            VAD_FRAME, int(options.vad_block_s * SAMPLE_RATE) // VAD_FRAME * VAD_FRAME
        )
        self._arrivals: deque[tuple[int, float]] = deque()  # (end sample, arrival time)
        self._utt: _Utterance | None = None
        self._manual_start = 0  # without VAD: where the uncommitted audio starts
        self._next_index = 0
        self._partial_task: asyncio.Task[None] | None = None
        self._finals: asyncio.Task[None] | None = None  # the last final, finals run in order
        self._pending_finals = 0
        self._last_partial_end = 0

    # ------------------------------------------------------------ input
    @property
    def position(self) -> float:
        """Seconds of audio received."""
        return self._pos / SAMPLE_RATE

    async def feed(self, samples: np.ndarray) -> None:
        """Append 16 kHz float32 ``samples [n]`` and act on what they complete."""
        if len(samples) == 0:
            return
        self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
        self._pos += len(samples)
        self._arrivals.append((self._pos, self._clock()))
        self.stats.audio_seconds += len(samples) / SAMPLE_RATE
        if self.options.vad:
            while self._pos - self._vad_pos >= self._block:
                await self._vad_step(self._block)
        else:
            utt = self._utt or self._open(self._manual_start)
            if self._pos - utt.start >= self.options.endpoint.max_utterance_s * SAMPLE_RATE:
                await self._close(utt.start, self._pos, forced=True)
                self._manual_start = self._pos
        self._maybe_partial()
        self._trim()

    async def _vad_step(self, n: int) -> None:
        lo = self._vad_pos - self._buf_start
        context = self._buf[max(0, lo - VAD_WARMUP) : lo]
        block = self._buf[lo : lo + n]
        probs = await self.engine.speech_probabilities(context, block)
        self._vad_pos += n
        for event in self.endpointer.push(probs.tolist()):
            if isinstance(event, _VadStarted):
                utt = self._open(event.start)
                await self._emit(SpeechStarted(utt.index, event.start / SAMPLE_RATE))
            else:
                await self._close(event.start, event.end, event.forced)

    async def commit(self) -> None:
        """End the open utterance now (Realtime ``input_audio_buffer.commit``)."""
        if self.options.vad:
            tail = self._pos - self._vad_pos
            if tail >= VAD_FRAME:
                await self._vad_step(tail // VAD_FRAME * VAD_FRAME)
            event = self.endpointer.flush()
            if event is not None:
                await self._close(event.start, self._pos, forced=True)
            self.endpointer.reset()
            self._vad_pos = self._pos
        elif self._utt is not None:
            await self._close(self._utt.start, self._pos, forced=True)
        self._manual_start = self._pos

    async def clear(self) -> None:
        """Drop the open utterance's audio unheard (Realtime ``input_audio_buffer.clear``)."""
        self._cancel_partial()
        self._utt = None
        if self.options.vad:
            self.endpointer.reset()
            self._vad_pos = self._pos
        self._manual_start = self._pos
        self._trim()

    async def finish(self) -> None:
        """End of stream: flush the open utterance and wait until every final is out."""
        await self.commit()
        self._cancel_partial()
        if self._finals is not None:
            await self._finals

    async def close(self) -> None:
        """The client is gone: stop every task of this stream without emitting more."""
        self._cancel_partial()
        if self._finals is not None and not self._finals.done():
            self._finals.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._finals

    # ------------------------------------------------------------ utterances
    def _open(self, start: int) -> _Utterance:
        self._utt = _Utterance(self._next_index, start, self.options.language)
        self._next_index += 1
        self._last_partial_end = start
        return self._utt

    async def _close(self, start: int, end: int, forced: bool) -> None:
        utt = self._utt
        self._utt = None
        self._cancel_partial()
        if utt is None:
            return
        await self._emit(SpeechStopped(utt.index, end / SAMPLE_RATE))
        start = max(start, self._buf_start)
        samples = self._buf[start - self._buf_start : end - self._buf_start].copy()
        closed_at = self._arrival(end)
        previous = self._finals
        self._pending_finals += 1
        self._finals = asyncio.get_running_loop().create_task(
            self._final(utt, start, end, samples, forced, closed_at, previous),
            name=f"final-{self.stream_id}-{utt.index}",
        )

    async def _final(
        self,
        utt: _Utterance,
        start: int,
        end: int,
        samples: np.ndarray,
        forced: bool,
        closed_at: float,
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            result: TranscriptionResult | None = None
            error: Exception | None = None
            try:
                result = await self.engine.transcribe(
                    samples, self.options.language, self.options.decode, self.stream_id
                )
            except Exception as exc:  # reported as an event; the stream goes on
                error = exc
            if previous is not None:  # finals go out in utterance order
                with contextlib.suppress(Exception):
                    await previous
            if result is None:
                assert error is not None
                self.stats.errors += 1
                await self._emit(StreamError(stream_error_code(error), str(error), utt.index))
                return
            latency = self._clock() - closed_at
            offset = start / SAMPLE_RATE
            transcript = result.transcript.shifted(offset)
            self.stats.utterances += 1
            self.stats.speech_seconds += (end - start) / SAMPLE_RATE
            self.stats.languages[result.language] = self.stats.languages.get(result.language, 0) + 1
            if self.metrics is not None:
                self.metrics.observe_final_latency(latency)
                self.metrics.add_stream_audio(result.language, (end - start) / SAMPLE_RATE)
            await self._emit(
                Final(
                    utt.index,
                    transcript.text,
                    result.language,
                    result.language_probability,
                    offset,
                    end / SAMPLE_RATE,
                    list(transcript.words),
                    forced,
                    latency,
                )
            )
        finally:
            self._pending_finals -= 1

    # ------------------------------------------------------------ partials
    def _maybe_partial(self) -> None:
        utt = self._utt
        if utt is None or not self.options.partials:
            return
        if self._partial_task is not None and not self._partial_task.done():
            return
        interval = int(self.options.partial_interval_s * SAMPLE_RATE)
        if self._pos - max(self._last_partial_end, utt.start) < interval:
            return
        if utt.language is None and self._pos - utt.start < self.options.lid_seconds * SAMPLE_RATE:
            return
        end = self._pos
        self._partial_task = asyncio.get_running_loop().create_task(
            self._partial(utt, end), name=f"partial-{self.stream_id}-{utt.index}"
        )

    async def _partial(self, utt: _Utterance, end: int) -> None:
        try:
            await self._compute_partial(utt, end)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a partial is best effort: skip it, the final decides
            log.debug(
                "stream %s: partial skipped (%s: %s)", self.stream_id, type(exc).__name__, exc
            )

    async def _compute_partial(self, utt: _Utterance, end: int) -> None:
        stride = self.engine.frame_samples
        if utt.language is None:
            lo = max(utt.start, self._buf_start) - self._buf_start
            utt.language, utt.language_probability = await self.engine.identify(
                self._buf[lo : end - self._buf_start].copy(), self.stream_id
            )
        # Recompute from a little before the frames that lacked right context last time.
        redo = max(0, utt.covered - int(0.2 * SAMPLE_RATE))
        first = redo // stride  # first utterance frame to replace
        context = int(self.options.partial_context_s * SAMPLE_RATE)
        win_start = max(0, (first * stride - context) // stride * stride)
        lo = utt.start + win_start - self._buf_start
        if lo < 0:  # trimmed away (cannot happen while the utterance is open)
            return
        window = self._buf[lo : end - self._buf_start].copy()
        if len(window) < 400:
            return
        language = utt.language
        assert language is not None
        logits = await self.engine.stream_logits(window, language, self.stream_id)
        if self._utt is not utt:
            return  # the utterance ended meanwhile: its final decides
        keep = logits[first - win_start // stride :]
        head = utt.logits[:first] if utt.logits is not None else logits[:0]
        running = np.concatenate([head, keep], axis=0)
        utt.logits, utt.covered = running, end - utt.start
        transcript = await self.engine.greedy(running, language)
        if self._utt is not utt or self._pending_finals:
            return  # keep events in order: the previous utterance's final comes first
        newest = self._arrival(self._last_partial_end + 1)
        self._last_partial_end = end
        if self.metrics is not None:
            self.metrics.observe_partial_latency(self._clock() - newest)
        if transcript.text == utt.text:
            return
        utt.text = transcript.text
        self.stats.partials += 1
        await self._emit(
            Partial(
                utt.index, transcript.text, language, utt.start / SAMPLE_RATE, end / SAMPLE_RATE
            )
        )

    def _cancel_partial(self) -> None:
        if self._partial_task is not None and not self._partial_task.done():
            self._partial_task.cancel()
        self._partial_task = None

    # ------------------------------------------------------------ bookkeeping
    def _arrival(self, sample: int) -> float:
        """When the frame holding stream sample ``sample - 1`` arrived."""
        for end, t in self._arrivals:
            if end >= sample:
                return t
        return self._clock()

    def _trim(self) -> None:
        """Keep the open utterance and the VAD warm-up and prefix padding before it."""
        keep_before = max(VAD_WARMUP, self.options.endpoint.prefix_padding_ms * SAMPLE_RATE // 1000)
        floor = self._vad_pos - keep_before if self.options.vad else self._manual_start
        if self._utt is not None:
            floor = min(floor, self._utt.start)
        cut = max(0, floor - self._buf_start)
        if cut > 0:
            self._buf = self._buf[cut:]
            self._buf_start += cut
        while len(self._arrivals) > 1 and self._arrivals[0][0] < self._buf_start:
            self._arrivals.popleft()
