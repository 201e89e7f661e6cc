"""Manifest round trip, relative paths, and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.train.data.manifest import (
    ManifestEntry,
    ManifestError,
    manifest_root,
    read_manifest,
    write_manifest,
)


def test_round_trip_and_relative_paths(tmp_path: Path) -> None:
    entries = [
        ManifestEntry("clips/a.wav", "hello world", "en", 1.25, "spk1"),
        ManifestEntry("/abs/b.wav", "grüß gott", "de", 2.0),
    ]
    path = tmp_path / "sub" / "train.jsonl"
    write_manifest(path, entries)
    assert read_manifest(path) == entries
    # UTF-8 kept as is, speaker omitted when None
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "grüß" in lines[1] and "speaker" not in lines[1]
    root = manifest_root(path)
    assert entries[0].audio_path(root) == tmp_path.resolve() / "sub" / "clips" / "a.wav"
    assert entries[1].audio_path(root) == Path("/abs/b.wav")
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"audio": "a.wav", "text": "x", "language": "en"}', "missing field 'duration'"),
        ('{"audio": "a.wav", "text": "x", "language": "en", "duration": "1"}', "wrong type"),
        ('{"audio": "a.wav", "text": "x", "language": "en", "duration": -1}', ">= 0"),
        ('{"audio": "", "text": "x", "language": "en", "duration": 1}', "'audio' is empty"),
        ('{"audio": "a", "text": "x", "language": "en", "duration": 1, "x": 1}', "unknown"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    good = json.dumps({"audio": "a.wav", "text": "x", "language": "en", "duration": 1.0})
    path = tmp_path / "m.jsonl"
    path.write_text(f"{good}\n\n{good}\n{line}\n", encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert err.value.line == 4
    assert f"{path}:4" in str(err.value) and problem in str(err.value)


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [ManifestEntry("a.wav", "x", "en", 1.0)])

    def broken() -> object:
        yield ManifestEntry("b.wav", "y", "en", 1.0)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_manifest(path, broken())  # type: ignore[arg-type]
    assert read_manifest(path) == [ManifestEntry("a.wav", "x", "en", 1.0)]
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]
