"""Up-front checks of a corpus, so a long run never meets bad data late.

Each bad utterance is either skipped and counted in a :class:`DataReport` (reason ->
the files and manifest lines), or, with ``on_error="raise"``, stops the run with a
:class:`DataError` that names the file and the line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.train.data.audio_io import SAMPLE_RATE, AudioError, audio_info, read_audio
from model.train.data.manifest import ManifestEntry, manifest_root, read_manifest

# Reasons an utterance is dropped (keys of DataReport.skipped).
MISSING_FILE = "missing_file"
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
EMPTY_TEXT = "empty_text"
BAD_CHARACTERS = "bad_characters"
UNKNOWN_LANGUAGE = "unknown_language"
SAMPLE_RATE_MISMATCH = "sample_rate"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
MALFORMED = "malformed"

# The wav2vec 2.0 feature encoder's receptive field is 400 samples (25 ms): shorter clips
# give no frame at all, and CTC needs at least one frame per target token.
MIN_SAMPLES_FOR_ONE_FRAME = 400


class DataError(ValueError):
    """A bad utterance in ``on_error="raise"`` mode; names the file and line."""

    def __init__(self, where: str, reason: str, detail: str) -> None:
        super().__init__(f"{where}: {reason}: {detail}")
        self.where = where
        self.reason = reason
        self.detail = detail


@dataclass
class DataReport:
    """What was kept and what was skipped, and why (reason -> ``"where: detail"`` items)."""

    total: int = 0
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    resampled: int = 0  # kept utterances whose audio is not at the target rate

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped.setdefault(reason, []).append(f"{where}: {detail}" if detail else where)

    def counts(self) -> dict[str, int]:
        return {reason: len(items) for reason, items in sorted(self.skipped.items())}

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def merge(self, other: DataReport) -> None:
        self.total += other.total
        self.kept += other.kept
        self.resampled += other.resampled
        for reason, items in other.skipped.items():
            self.skipped.setdefault(reason, []).extend(items)

    def summary(self, examples: int = 3) -> str:
        """Human-readable: counts per reason with a few example files each."""
        lines = [f"{self.kept} of {self.total} utterances kept, {self.n_skipped} skipped"]
        for reason, items in sorted(self.skipped.items()):
            more = f" (+{len(items) - examples} more)" if len(items) > examples else ""
            lines.append(f"  {reason}: {len(items)}, e.g. {'; '.join(items[:examples])}{more}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "resampled": self.resampled,
            "skipped": self.counts(),
            "examples": {reason: items[:20] for reason, items in sorted(self.skipped.items())},
        }


@dataclass(frozen=True)
class ValidationConfig:
    """What counts as a usable utterance."""

    languages: Collection[str] | None = None  # allowed language codes; None: any
    # Characters allowed per language (" " implied); None: any. Vocabulary.alphabets fits.
    alphabets: Mapping[str, Collection[str]] | None = None
    min_duration: float = 0.1  # seconds; must be >= 400 samples for one encoder frame
    max_duration: float | None = 30.0
    sample_rate: int = SAMPLE_RATE
    resample: bool = True  # False: audio at another rate is refused (SAMPLE_RATE_MISMATCH)
    decode: bool = False  # also decode every file (slow; catches corrupt payloads)
    duration_tolerance: float = 0.25  # seconds the audio may fall short of the manifest
    on_error: Literal["skip", "raise"] = "skip"

    def __post_init__(self) -> None:
        if self.min_duration * self.sample_rate < MIN_SAMPLES_FOR_ONE_FRAME:
            raise ValueError(
                f"min_duration {self.min_duration} s is under {MIN_SAMPLES_FOR_ONE_FRAME} "
                "samples: such clips give the feature encoder no frame"
            )


def check_text(text: str, language: str, config: ValidationConfig) -> tuple[str, str] | None:
    """(reason, detail) when the transcript or language is unusable, else None."""
    if config.languages is not None and language not in config.languages:
        return UNKNOWN_LANGUAGE, f"language {language!r} not in {sorted(config.languages)}"
    if not text.strip():
        return EMPTY_TEXT, "empty transcript"
    # Numerals are spoken as words but no alphabet spells them: normalizing would drop
    # them and leave a transcript that no longer matches the speech.
    numerals = sorted({ch for ch in text if unicodedata.category(ch)[0] == "N"})
    if numerals:
        return BAD_CHARACTERS, f"numerals {numerals!r}: spell them out in words"
    if config.alphabets is not None:
        alphabet = config.alphabets.get(language)
        if alphabet is None:
            return UNKNOWN_LANGUAGE, f"no alphabet for language {language!r}"
        allowed = set(alphabet) | {" "}
        bad = sorted({ch for ch in text if ch not in allowed})
        if bad:
            return BAD_CHARACTERS, f"characters outside the {language} alphabet: {bad!r}"
    return None


def check_audio(
    path: Path, declared_duration: float | None, config: ValidationConfig
) -> tuple[str, str] | tuple[None, bool]:
    """(reason, detail) when the audio is unusable, else (None, needs_resampling)."""
    if not path.is_file():
        return MISSING_FILE, "no such file"
    try:
        info = audio_info(path)
    except AudioError as exc:
        return UNREADABLE, exc.problem
    if info.frames <= 0 or info.sample_rate <= 0:
        return UNREADABLE, "no audio samples"
    if info.truncated:
        return TRUNCATED, "the file ends before its data chunk does"
    duration = info.duration
    if config.decode:
        try:
            samples, rate = read_audio(path)
        except AudioError as exc:
            return UNREADABLE, exc.problem
        duration = len(samples) / rate
    if declared_duration is not None and duration < declared_duration - config.duration_tolerance:
        return TRUNCATED, f"{duration:.2f} s of audio, the manifest says {declared_duration:.2f} s"
    if duration < config.min_duration:
        return TOO_SHORT, f"{duration:.3f} s < {config.min_duration} s"
    if config.max_duration is not None and duration > config.max_duration:
        return TOO_LONG, f"{duration:.1f} s > {config.max_duration} s"
    if info.sample_rate != config.sample_rate and not config.resample:
        return SAMPLE_RATE_MISMATCH, f"{info.sample_rate} Hz, expected {config.sample_rate} Hz"
    return None, info.sample_rate != config.sample_rate


def validate_entries(
    entries: Iterable[ManifestEntry],
    root: Path,
    config: ValidationConfig | None = None,
    source: str = "<entries>",
    progress: Callable[[int], None] | None = None,
) -> tuple[list[ManifestEntry], DataReport]:
    """Check every entry (text first, then audio header); returns the usable ones and a report.

    ``source`` names the manifest in messages (``source:line``, 1-based in entry order).
    """
    config = config or ValidationConfig()
    report = DataReport()
    kept: list[ManifestEntry] = []
    for number, entry in enumerate(entries, start=1):
        report.total += 1
        path = entry.audio_path(root)
        where = f"{source}:{number} ({path})"
        problem = check_text(entry.text, entry.language, config)
        if problem is None:
            reason, detail = check_audio(path, entry.duration, config)
            if reason is not None:
                assert isinstance(detail, str)
                problem = (reason, detail)
            elif detail:
                report.resampled += 1
        if problem is not None:
            if config.on_error == "raise":
                raise DataError(where, *problem)
            report.skip(problem[0], where, problem[1])
        else:
            kept.append(entry)
            report.kept += 1
        if progress is not None:
            progress(number)
    return kept, report


def validate_manifest(
    path: Path | str, config: ValidationConfig | None = None
) -> tuple[list[ManifestEntry], DataReport]:
    """Read and check a whole manifest up front (ManifestError for a malformed line)."""
    path = Path(path)
    entries = read_manifest(path)
    return validate_entries(entries, manifest_root(path), config, source=str(path))
