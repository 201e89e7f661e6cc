"""Importers for corpora users have: a Common Voice release and a folder of audio + transcripts.

Both return manifest entries with absolute audio paths and durations read from the audio
headers; files that are missing or unreadable are skipped and counted in a DataReport.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from model.atomic import atomic_write_text
from model.text import normalize as normalize_text
from model.train.data.audio_io import AudioError, audio_info
from model.train.data.manifest import ManifestEntry, ManifestError, write_manifest
from model.train.data.validate import EMPTY_TEXT, MISSING_FILE, TRUNCATED, UNREADABLE, DataReport

SPLITS = ("train", "dev", "test")


def normalize_transcript(text: str) -> str:
    """:func:`model.text.normalize`, numerals kept: a transcript with digits is reported
    by validation (spell them out), not silently changed into other words."""
    return normalize_text(text, numerals=True)


def _entry_for(
    audio: Path,
    text: str,
    language: str,
    speaker: str | None,
    where: str,
    report: DataReport,
) -> ManifestEntry | None:
    report.total += 1
    if not audio.is_file():
        report.skip(MISSING_FILE, where, str(audio))
        return None
    try:
        info = audio_info(audio)
    except AudioError as exc:
        report.skip(UNREADABLE, where, f"{audio}: {exc.problem}")
        return None
    if info.truncated:
        report.skip(TRUNCATED, where, str(audio))
        return None
    if info.frames <= 0:
        report.skip(UNREADABLE, where, f"{audio}: no audio samples")
        return None
    if not text:
        report.skip(EMPTY_TEXT, where, str(audio))
        return None
    report.kept += 1
    return ManifestEntry(str(audio.resolve()), text, language, round(info.duration, 4), speaker)


def split_of(sentence: str, seed: int, dev: float, test: float) -> str:
    """Deterministic split for a sentence (a hash), so one sentence never lands in two splits."""
    digest = hashlib.sha256(f"{seed}\x00{sentence}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test else "dev" if u < test + dev else "train"


def import_common_voice(
    root: Path | str,
    languages: Sequence[str] | None = None,
    normalize: bool = True,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    report: DataReport | None = None,
) -> dict[str, list[ManifestEntry]]:
    """A Common Voice release folder -> ``{"train": [...], "dev": [...], "test": [...]}``.

    Layout: ``root/<lang>/validated.tsv`` and ``root/<lang>/clips/<path>`` (mp3). When the
    release has ``train.tsv``/``dev.tsv``/``test.tsv`` those define the splits; otherwise
    ``validated.tsv`` is split by sentence (hash of the normalized text, ``seed``).
    Columns are found by name (``path``, ``sentence``, optional ``client_id``).
    """
    root = Path(root)
    report = report if report is not None else DataReport()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    found = sorted(p.parent.name for p in root.glob("*/validated.tsv"))
    langs = list(languages) if languages is not None else found
    missing = [lang for lang in langs if lang not in found]
    if missing:
        raise FileNotFoundError(f"{root}: no <lang>/validated.tsv for {missing}")
    out: dict[str, list[ManifestEntry]] = {split: [] for split in SPLITS}
    for lang in langs:
        folder = root / lang
        have_splits = all((folder / f"{s}.tsv").is_file() for s in SPLITS)
        tables: list[tuple[str | None, Path]] = (
            [(s, folder / f"{s}.tsv") for s in SPLITS]
            if have_splits
            else [(None, folder / "validated.tsv")]
        )
        for split, table in tables:
            for line, row in _read_tsv(table, ("path", "sentence")):
                text = normalize_transcript(row["sentence"]) if normalize else row["sentence"]
                speaker = row.get("client_id") or None
                entry = _entry_for(
                    folder / "clips" / row["path"], text, lang, speaker, f"{table}:{line}", report
                )
                if entry is None:
                    continue
                target = split or split_of(text, seed, dev_fraction, test_fraction)
                out[target].append(entry)
    return out


def _read_tsv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a headed TSV with their 1-based file line; ManifestError if a column is absent."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = reader.fieldnames or []
        absent = [c for c in required if c not in columns]
        if absent:
            raise ManifestError(path, 1, f"missing columns {absent} (header: {columns})")
        rows = []
        for row in reader:
            rows.append((reader.line_num, {k: (v or "") for k, v in row.items() if k}))
        return rows


def import_folder(
    folder: Path | str,
    language: str,
    transcripts: str = "transcripts.tsv",
    normalize: bool = True,
    speaker: str | None = None,
    report: DataReport | None = None,
) -> list[ManifestEntry]:
    """A folder of audio files with ``transcripts.tsv`` (``file<TAB>text`` per line, no header).

    ``file`` is relative to the folder. A line without a tab is a ManifestError naming the
    transcript file and line; a missing or unreadable audio file is skipped and counted.
    """
    folder = Path(folder)
    table = folder / transcripts
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no transcript file")
    report = report if report is not None else DataReport()
    entries = []
    for number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ManifestError(table, number, "expected 'file<TAB>text'")
        name, text = line.split("\t", 1)
        text = normalize_transcript(text) if normalize else text.strip()
        entry = _entry_for(
            folder / name.strip(), text, language, speaker, f"{table}:{number}", report
        )
        if entry is not None:
            entries.append(entry)
    return entries


def split_by_sentence(
    entries: Sequence[ManifestEntry], seed: int = 0, dev: float = 0.05, test: float = 0.05
) -> dict[str, list[ManifestEntry]]:
    """``{"train", "dev", "test"}`` by :func:`split_of` of each transcript."""
    out: dict[str, list[ManifestEntry]] = {split: [] for split in SPLITS}
    for entry in entries:
        out[split_of(entry.text, seed, dev, test)].append(entry)
    return out


def write_import(
    out_dir: Path | str, splits: Mapping[str, Sequence[ManifestEntry]], report: DataReport
) -> dict[str, Path]:
    """``<out>/<split>.jsonl`` for each split and ``<out>/import_report.json``; the paths."""
    out_dir = Path(out_dir)
    paths = {}
    for split in SPLITS:
        paths[split] = out_dir / f"{split}.jsonl"
        write_manifest(paths[split], splits.get(split, []))
    atomic_write_text(out_dir / "import_report.json", json.dumps(report.to_dict(), indent=1))
    return paths
