"""Response bodies of ``/v1/audio/transcriptions``, exactly as OpenAI's API shapes them.

``json``: ``{"text", "usage"}``; ``text``: the text, ``text/plain``; ``srt`` and ``vtt``:
subtitles, one cue per segment; ``verbose_json``: ``task``, ``language``, ``duration``,
``text``, ``segments`` (when the ``segment`` granularity is asked for, the default) and
``words`` (when ``word`` is). lass is a CTC model: it has no BPE tokens (``tokens`` is
empty), decodes at temperature 0 and has no separate no-speech detector
(``no_speech_prob`` is 0).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Literal

from model.decoding import Segment, Transcript

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES: tuple[str, ...] = ("word", "segment")

CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def segments_of(transcript: Transcript) -> list[Segment]:
    """Segments split at pauses; empty for an empty transcript."""
    return transcript.segments() if transcript.words else []


def to_srt(segments: Sequence[Segment]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "".join(cue + "\n" for cue in cues)  # a blank line after every cue


def to_vtt(segments: Sequence[Segment]) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments]
    return "WEBVTT\n\n" + "".join(cue + "\n" for cue in cues)


def verbose(
    transcript: Transcript, duration: float, granularities: Sequence[str]
) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` body."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript.language,
        "duration": round(duration, 3),
        "text": transcript.text,
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": round(s.start * 100),  # OpenAI counts seek in 10 ms frames
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": s.avg_logprob if s.avg_logprob is not None else 0.0,
                "compression_ratio": round(_compression_ratio(s.text), 4),
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(segments_of(transcript))
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
            for w in transcript.words
        ]
    body["usage"] = {"type": "duration", "seconds": round(duration, 3)}
    return body


def render(
    transcript: Transcript,
    duration: float,
    response_format: str,
    granularities: Sequence[str] = (),
) -> tuple[str | dict[str, Any], str]:
    """(body, content type): a dict for the JSON formats, a string otherwise."""
    media = CONTENT_TYPES[response_format]
    if response_format == "json":
        usage = {"type": "duration", "seconds": round(duration, 3)}
        return {"text": transcript.text, "usage": usage}, media
    if response_format == "text":
        return transcript.text + "\n", media
    if response_format == "srt":
        return to_srt(segments_of(transcript)), media
    if response_format == "vtt":
        return to_vtt(segments_of(transcript)), media
    if response_format == "verbose_json":
        return verbose(transcript, duration, granularities), media
    raise ValueError(f"unknown response_format {response_format!r}")
