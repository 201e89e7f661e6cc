"""JSONL manifests: one utterance per line (audio, text, language, duration, optional speaker).

Relative audio paths resolve against the manifest's folder, so a corpus folder can
be moved or copied as a whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.atomic import atomic_writer


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance."""

    audio: str  # path, absolute or relative to the manifest's folder
    text: str
    language: str
    duration: float  # seconds
    speaker: str | None = None

    def audio_path(self, root: Path) -> Path:
        """The audio file's path, resolving a relative ``audio`` against ``root``."""
        path = Path(self.audio)
        return path if path.is_absolute() else root / path

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        if d["speaker"] is None:
            del d["speaker"]
        return json.dumps(d, ensure_ascii=False)


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "audio": str,
    "text": str,
    "language": str,
    "duration": (int, float),
}


def parse_entry(obj: Any, path: Path | str, line: int | None) -> ManifestEntry:
    """Check one decoded JSON object; ManifestError naming ``path:line`` if malformed."""
    if not isinstance(obj, dict):
        raise ManifestError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in obj:
            raise ManifestError(path, line, f"missing field {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ManifestError(path, line, f"field {key!r} has the wrong type: {value!r}")
    duration = float(obj["duration"])
    if not math.isfinite(duration) or duration < 0:
        raise ManifestError(path, line, f"field 'duration' must be >= 0, got {duration!r}")
    if not obj["audio"]:
        raise ManifestError(path, line, "field 'audio' is empty")
    speaker = obj.get("speaker")
    if speaker is not None and not isinstance(speaker, str):
        raise ManifestError(path, line, f"field 'speaker' must be a string, got {speaker!r}")
    unknown = set(obj) - {*_REQUIRED, "speaker"}
    if unknown:
        raise ManifestError(path, line, f"unknown fields {sorted(unknown)}")
    return ManifestEntry(obj["audio"], obj["text"], obj["language"], duration, speaker)


def read_manifest(path: Path | str) -> list[ManifestEntry]:
    """All entries of a JSONL manifest; blank lines are skipped.

    Raises ManifestError naming the file and the 1-based line of the first bad line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, None, f"cannot read: {exc}") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(path, number, f"invalid JSON: {exc.msg}") from exc
        entries.append(parse_entry(obj, path, number))
    return entries


def write_manifest(path: Path | str, entries: Iterable[ManifestEntry]) -> None:
    """Write entries as JSONL atomically: a temporary file in the same folder, then rename."""
    with atomic_writer(path) as f:
        for entry in entries:
            f.write(entry.to_json() + "\n")


def manifest_root(path: Path | str) -> Path:
    """The folder relative audio paths of a manifest resolve against."""
    return Path(path).resolve().parent
