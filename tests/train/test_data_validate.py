"""Each bad-input case is skipped and counted (or raised, naming the file and line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.train.data.audio_io import read_audio, write_audio
from model.train.data.manifest import ManifestEntry, ManifestError, write_manifest
from model.train.data.validate import DataError, ValidationConfig, validate_manifest
from tests.conftest import Utterance

ALPHABETS = {
    "en": list("abcdefghijklmnopqrstuvwxyz'"),
    "de": list("abcdefghijklmnopqrstuvwxyzäöüß"),
}


def _bad_corpus(root: Path, speech: dict[str, list[Utterance]]) -> dict[str, ManifestEntry]:
    """One good clip and one clip per failure mode; returns name -> entry."""
    en = speech["en"][0]
    samples, rate = read_audio(en.path)
    write_audio(root / "good.wav", samples, rate)
    data = (root / "good.wav").read_bytes()
    (root / "truncated.wav").write_bytes(data[: len(data) // 2])
    (root / "garbage.wav").write_bytes(b"this is not audio at all" * 20)
    write_audio(root / "short.wav", samples[:800], rate)  # 50 ms
    # same speech at 8 kHz
    write_audio(root / "8k.wav", samples[::2].copy(), 8000)
    d = en.duration
    return {
        "good": ManifestEntry("good.wav", en.text, "en", d),
        "truncated": ManifestEntry("truncated.wav", en.text, "en", d),
        "garbage": ManifestEntry("garbage.wav", en.text, "en", d),
        "missing": ManifestEntry("nope.wav", en.text, "en", d),
        "empty": ManifestEntry("good.wav", "   ", "en", d),
        "chars": ManifestEntry("good.wav", "the cat Sat", "en", d),
        "language": ManifestEntry("good.wav", en.text, "xx", d),
        "short": ManifestEntry("short.wav", "hi", "en", 0.05),
        "rate": ManifestEntry("8k.wav", en.text, "en", d),
        "other_language": ManifestEntry("good.wav", en.text, "de", d),
    }


def test_each_bad_case_is_skipped_and_counted(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    entries = _bad_corpus(tmp_path, speech)
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, entries.values())
    config = ValidationConfig(languages=["en", "de"], alphabets=ALPHABETS, max_duration=None)
    kept, report = validate_manifest(manifest, config)
    assert kept == [entries["good"], entries["rate"], entries["other_language"]]
    assert report.resampled == 1
    assert report.counts() == {
        "bad_characters": 1,
        "empty_text": 1,
        "missing_file": 1,
        "too_short": 1,
        "truncated": 1,
        "unknown_language": 1,
        "unreadable": 1,
    }
    # each item names the manifest line and the audio file
    assert report.skipped["truncated"][0].startswith(f"{manifest}:2 (")
    assert "truncated.wav" in report.skipped["truncated"][0]
    assert "'S'" in report.skipped["bad_characters"][0]
    assert "missing_file: 1" in report.summary()
    assert report.to_dict()["skipped"]["unreadable"] == 1


def test_refuse_other_rates_and_long_clips(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    entries = _bad_corpus(tmp_path, speech)
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [entries["good"], entries["rate"]])
    kept, report = validate_manifest(manifest, ValidationConfig(resample=False))
    assert kept == [entries["good"]]
    assert report.counts() == {"sample_rate": 1}
    assert "8000 Hz" in report.skipped["sample_rate"][0]
    kept, report = validate_manifest(manifest, ValidationConfig(max_duration=0.5))
    assert kept == [] and report.counts() == {"too_long": 2}


def test_numerals_are_refused_without_alphabets_too(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    # Training builds its alphabets from the text, so no alphabet is given: a numeral
    # would be dropped by normalization, leaving a transcript that misses a spoken word.
    entries = _bad_corpus(tmp_path, speech)
    manifest = tmp_path / "m.jsonl"
    numeral = ManifestEntry("good.wav", "we have 3 cats", "en", entries["good"].duration)
    write_manifest(manifest, [entries["good"], numeral])
    kept, report = validate_manifest(manifest, ValidationConfig())
    assert kept == [entries["good"]]
    assert report.counts() == {"bad_characters": 1}
    assert "'3'" in report.skipped["bad_characters"][0]
    assert report.skipped["bad_characters"][0].startswith(f"{manifest}:2 (")


def test_decode_catches_a_shorter_payload(tmp_path: Path) -> None:
    # a clip whose header is fine but that holds less audio than the manifest claims
    write_audio(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [ManifestEntry("a.wav", "x", "en", 2.0)])
    _, report = validate_manifest(manifest, ValidationConfig(decode=True))
    assert report.counts() == {"truncated": 1}


def test_raise_mode_names_file_and_line(tmp_path: Path, speech: dict[str, list[Utterance]]) -> None:
    entries = _bad_corpus(tmp_path, speech)
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [entries["good"], entries["good"], entries["garbage"]])
    with pytest.raises(DataError) as err:
        validate_manifest(manifest, ValidationConfig(on_error="raise"))
    assert err.value.reason == "unreadable"
    assert str(err.value).startswith(f"{manifest}:3 (") and "garbage.wav" in str(err.value)


def test_malformed_manifest_and_too_small_minimum(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:1: missing field 'text'"):
        validate_manifest(manifest)
    with pytest.raises(ValueError, match="400 samples"):
        ValidationConfig(min_duration=0.01)
