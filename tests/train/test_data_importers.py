"""Importers on tiny fake corpora made of real espeak-ng speech (mp3 for Common Voice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.train.data.audio_io import audio_info, load_audio, read_audio, write_audio
from model.train.data.importers import (
    import_common_voice,
    import_folder,
    normalize_transcript,
    split_of,
)
from model.train.data.manifest import ManifestError
from model.train.data.validate import DataReport
from tests.conftest import Utterance

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\n"


def _fake_cv(root: Path, speech: dict[str, list[Utterance]], langs: list[str]) -> None:
    """A Common Voice-shaped release: 48 kHz mp3 clips and validated.tsv per language."""
    for lang in langs:
        clips = root / lang / "clips"
        rows = []
        for i, utt in enumerate(speech[lang]):
            samples, rate = read_audio(utt.path)
            name = f"common_voice_{lang}_{i}.mp3"
            write_audio(clips / name, samples, rate)
            rows.append(f"spk{i}\t{name}\t{utt.text.capitalize()}!\t2\t0\t\t\t\t{lang}\n")
        rows.append(f"spk9\tmissing.mp3\tNot there.\t2\t0\t\t\t\t{lang}\n")
        (root / lang / "validated.tsv").write_text(CV_HEADER + "".join(rows), encoding="utf-8")


def test_common_voice_without_split_files(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    _fake_cv(tmp_path, speech, ["de", "es"])
    report = DataReport()
    splits = import_common_voice(tmp_path, test_fraction=0.5, dev_fraction=0.0, report=report)
    entries = [e for split in splits.values() for e in split]
    assert {e.language for e in entries} == {"de", "es"}
    assert len(entries) == 4
    by_text = {e.text: e for e in entries}
    for lang in ("de", "es"):
        for utt in speech[lang]:
            e = by_text[utt.text]  # normalized: lowercase, "!" gone
            assert e.language == lang and e.speaker is not None
            assert Path(e.audio).is_absolute() and e.audio.endswith(".mp3")
            # mp3 encoder padding adds a few ms at most
            assert e.duration == pytest.approx(utt.duration, abs=0.08)
    # one missing clip per language, skipped and named
    assert report.counts() == {"missing_file": 2}
    assert "validated.tsv:4" in report.skipped["missing_file"][0]
    # the split is a function of the sentence only
    for split, items in splits.items():
        assert all(split_of(e.text, 0, 0.0, 0.5) == split for e in items)
    # the mp3 decodes to 16 kHz speech of the right length
    audio = load_audio(entries[0].audio)
    assert abs(len(audio) / 16000 - entries[0].duration) < 0.08


def test_common_voice_with_split_files(tmp_path: Path, speech: dict[str, list[Utterance]]) -> None:
    _fake_cv(tmp_path, speech, ["it"])
    rows = (tmp_path / "it" / "validated.tsv").read_text().splitlines(keepends=True)
    (tmp_path / "it" / "train.tsv").write_text(rows[0] + rows[1])
    (tmp_path / "it" / "dev.tsv").write_text(rows[0])
    (tmp_path / "it" / "test.tsv").write_text(rows[0] + rows[2])
    splits = import_common_voice(tmp_path, languages=["it"])
    assert [e.text for e in splits["train"]] == [speech["it"][0].text]
    assert splits["dev"] == []
    assert [e.text for e in splits["test"]] == [speech["it"][1].text]


def test_common_voice_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fr"):
        import_common_voice(tmp_path, languages=["fr"])
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "validated.tsv").write_text("client_id\tfile\ttext\n")
    with pytest.raises(ManifestError, match=r"validated.tsv:1: missing columns"):
        import_common_voice(tmp_path)


def test_folder_importer(tmp_path: Path, speech: dict[str, list[Utterance]]) -> None:
    for i, utt in enumerate(speech["en"]):
        samples, rate = read_audio(utt.path)
        write_audio(tmp_path / f"{i}.flac", samples, rate)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (tmp_path / "transcripts.tsv").write_text(
        f"0.flac\t{speech['en'][0].text}\n1.flac\tGood Morning, to you.\n"
        "bad.wav\tbroken file\n2.flac\tno such file\n"
    )
    report = DataReport()
    entries = import_folder(tmp_path, "en", speaker="anna", report=report)
    assert [e.text for e in entries] == [speech["en"][0].text, "good morning to you"]
    assert all(e.speaker == "anna" and e.language == "en" for e in entries)
    assert entries[1].duration == pytest.approx(audio_info(tmp_path / "1.flac").duration)
    assert report.counts() == {"missing_file": 1, "unreadable": 1}
    assert report.kept == 2 and report.total == 4

    (tmp_path / "transcripts.tsv").write_text("0.flac\tfine\n1.flac no tab here\n")
    with pytest.raises(ManifestError, match=r"transcripts.tsv:2: expected 'file<TAB>text'"):
        import_folder(tmp_path, "en")


def test_normalize_transcript() -> None:
    assert normalize_transcript("  L’Homme, qu'il «aime»!  ") == "l'homme qu'il aime"
    assert normalize_transcript("'Quoted' text") == "quoted text"
    # Numerals stay for validation to report; combining marks stay inside their words.
    assert normalize_transcript("Route 66") == "route 66"
    assert normalize_transcript("Пра\u0301вда, हिन्दी!") == "пра\u0301вда हिन्दी"


def test_import_commands_write_manifests(
    tmp_path: Path, speech: dict[str, list[Utterance]]
) -> None:
    from typer.testing import CliRunner

    from model.train.cli import app
    from model.train.data.manifest import read_manifest

    runner = CliRunner()
    _fake_cv(tmp_path / "cv", speech, ["de", "es"])
    out = tmp_path / "cv-out"
    result = runner.invoke(
        app,
        ["import-cv", str(tmp_path / "cv"), str(out), "--language", "de", "--test-fraction", "0.5"],
    )
    assert result.exit_code == 0, result.output
    splits = {s: read_manifest(out / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert sum(map(len, splits.values())) == 2
    assert {e.language for v in splits.values() for e in v} == {"de"}
    assert json.loads((out / "import_report.json").read_text())["skipped"] == {"missing_file": 1}
    bad = runner.invoke(app, ["import-cv", str(tmp_path / "cv"), str(out), "--language", "fr"])
    assert bad.exit_code == 2 and "fr" in bad.output

    folder = tmp_path / "folder"
    lines = []
    for i, utt in enumerate(speech["en"]):
        samples, rate = read_audio(utt.path)
        write_audio(folder / f"{i}.flac", samples, rate)
        lines.append(f"{i}.flac\t{utt.text}\n")
    (folder / "transcripts.tsv").write_text("".join(lines) + "gone.flac\tno such file\n")
    out = tmp_path / "folder-out"
    result = runner.invoke(app, ["import-folder", str(folder), "en", str(out), "--speaker", "x"])
    assert result.exit_code == 0, result.output
    entries = [e for s in ("train", "dev", "test") for e in read_manifest(out / f"{s}.jsonl")]
    assert sorted(e.text for e in entries) == sorted(u.text for u in speech["en"])
    assert all(e.speaker == "x" and e.language == "en" for e in entries)
    assert json.loads((out / "import_report.json").read_text())["skipped"] == {"missing_file": 1}
