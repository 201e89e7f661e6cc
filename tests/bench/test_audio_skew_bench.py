"""bench.audio_skew runs end to end on a small corpus and reports every figure; with the
shared front end (model/audio.py) the trainer's and the service's samples are the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.audio_skew import main
from model.train.data.manifest import ManifestEntry, write_manifest
from tests.conftest import Utterance


@pytest.mark.parametrize("fmt", ["mp3", "m4a"])
def test_audio_skew_bench_on_a_small_corpus(
    fmt: str,
    speech: dict[str, list[Utterance]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    entries = [
        ManifestEntry(str(u.path), u.text, lang, u.duration)
        for lang in ("de", "es")
        for u in speech[lang]
    ]
    write_manifest(corpus / "test.jsonl", entries)
    before = {e.audio: Path(e.audio).read_bytes() for e in entries}
    assert main([str(tmp_path / "work"), "--corpus", str(corpus), "--format", fmt]) == 0
    # Absolute manifest paths are mirrored under the work folder, the clips left alone.
    assert {e.audio: Path(e.audio).read_bytes() for e in entries} == before
    assert not list(Path(entries[0].audio).parent.glob(f"*.{fmt}"))
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["clips"] == 4
    assert set(result["cer_greedy"]) == {"wav", "trainer", "service"}
    for figures in result["cer_greedy"].values():
        assert set(figures) == {"de", "es"}
    assert result["samples"]["same_length"] == 4
    assert result["samples"]["max_abs_difference"] == 0.0
    assert result["cer_greedy"]["trainer"] == result["cer_greedy"]["service"]
    assert result["encoded"]["format"] == fmt
    assert (tmp_path / "work" / f"report-{fmt}.json").is_file()
