"""Response bodies in OpenAI's shapes, from a hand-made transcript."""

from __future__ import annotations

from model.decoding import Transcript, Word
from service.formats import render

T = Transcript(
    text="hello world again",
    language="en",
    words=[
        Word("hello", 0.10, 0.50, 0.9),
        Word("world", 0.60, 1.00, 0.8),
        Word("again", 3.00, 3.42, 0.7),  # after a long pause: a second segment
    ],
    duration=3.5,
)


def test_json_and_text() -> None:
    body, media = render(T, 3.5, "json")
    assert media == "application/json"
    assert body == {"text": "hello world again", "usage": {"type": "duration", "seconds": 3.5}}
    body, media = render(T, 3.5, "text")
    assert (body, media) == ("hello world again\n", "text/plain; charset=utf-8")


def test_srt_and_vtt() -> None:
    srt, _ = render(T, 3.5, "srt")
    assert srt == (
        "1\n00:00:00,100 --> 00:00:01,000\nhello world\n\n"
        "2\n00:00:03,000 --> 00:00:03,420\nagain\n\n"
    )
    vtt, media = render(T, 3.5, "vtt")
    assert media.startswith("text/vtt")
    assert vtt == (
        "WEBVTT\n\n00:00:00.100 --> 00:00:01.000\nhello world\n\n"
        "00:00:03.000 --> 00:00:03.420\nagain\n\n"
    )


def test_verbose_json_granularities() -> None:
    body, _ = render(T, 3.5, "verbose_json", ["word", "segment"])
    assert isinstance(body, dict)
    assert {"task", "language", "duration", "text", "segments", "words"} <= set(body)
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert [w["word"] for w in body["words"]] == ["hello", "world", "again"]
    assert set(body["words"][0]) == {"word", "start", "end"}
    seg_fields = {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert [set(s) for s in body["segments"]] == [seg_fields, seg_fields]
    assert [s["text"] for s in body["segments"]] == ["hello world", "again"]
    only_words, _ = render(T, 3.5, "verbose_json", ["word"])
    assert isinstance(only_words, dict) and "segments" not in only_words
    default, _ = render(T, 3.5, "verbose_json")
    assert isinstance(default, dict) and "segments" in default and "words" not in default


def test_empty_transcript() -> None:
    empty = Transcript("", "en", [], 1.0)
    assert render(empty, 1.0, "srt")[0] == ""
    assert render(empty, 1.0, "vtt")[0] == "WEBVTT\n\n"
    body, _ = render(empty, 1.0, "verbose_json", ["segment"])
    assert isinstance(body, dict) and body["segments"] == []
