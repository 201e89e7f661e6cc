"""A map-style dataset over manifest entries: 16 kHz mono waveforms, token ids, language ids.

Texts are encoded once, up front, so a character outside a language's alphabet is found
before training starts (skipped and counted, or an error naming the manifest line),
never at step 50 000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset

from model.train.data.audio_io import SAMPLE_RATE, load_audio
from model.train.data.manifest import ManifestEntry, manifest_root, read_manifest
from model.train.data.validate import (
    BAD_CHARACTERS,
    UNKNOWN_LANGUAGE,
    DataError,
    DataReport,
    ValidationConfig,
    validate_entries,
)

Encoder = Callable[[str, str], list[int]]  # (text, language) -> token ids; ValueError if foreign


class HasEncode(Protocol):
    def encode(self, text: str, language: str) -> list[int]: ...


@dataclass
class Sample:
    """One utterance, ready for :func:`model.train.data.batching.collate`."""

    waveform: Tensor  # [T] float32 at 16 kHz
    targets: Tensor  # [U] long token ids (empty without an encoder)
    lang_id: int  # index into the dataset's ``languages``
    text: str
    index: int  # position in the dataset


class AudioDataset(Dataset[Sample]):
    """Utterances of ``entries`` (audio relative to ``root``); ``languages`` fixes lang ids.

    ``encoder``: ``model.vocab.Vocabulary`` (its ``encode``) or any ``(text, lang) -> ids``;
    None for unlabelled audio (pre-training). Entries whose language is not in
    ``languages`` or whose text the encoder refuses are skipped and counted in
    ``self.report`` (``on_error="skip"``) or raise DataError naming ``source:line``.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        root: Path | str,
        languages: Sequence[str],
        encoder: Encoder | HasEncode | None = None,
        sample_rate: int = SAMPLE_RATE,
        on_error: Literal["skip", "raise"] = "skip",
        source: str = "<entries>",
    ) -> None:
        self.root = Path(root)
        self.languages = list(languages)
        self.sample_rate = sample_rate
        lang_index = {lang: i for i, lang in enumerate(self.languages)}
        # A Vocabulary (or anything with .encode) or a plain function.
        encode = cast(Encoder | None, getattr(encoder, "encode", encoder))
        self.report = DataReport()
        self.entries: list[ManifestEntry] = []
        self.targets: list[list[int]] = []
        for number, entry in enumerate(entries, start=1):
            self.report.total += 1
            where = f"{source}:{number} ({entry.audio_path(self.root)})"
            problem: tuple[str, str] | None = None
            ids: list[int] = []
            if entry.language not in lang_index:
                problem = (UNKNOWN_LANGUAGE, f"language {entry.language!r} not in {languages}")
            elif encode is not None:
                try:
                    ids = encode(entry.text, entry.language)
                except (ValueError, KeyError) as exc:
                    problem = (BAD_CHARACTERS, str(exc))
            if problem is not None:
                if on_error == "raise":
                    raise DataError(where, *problem)
                self.report.skip(problem[0], where, problem[1])
                continue
            self.report.kept += 1
            self.entries.append(entry)
            self.targets.append(ids)
        self.lang_ids = [lang_index[e.language] for e in self.entries]
        self.durations = [e.duration for e in self.entries]

    @classmethod
    def from_manifest(
        cls,
        path: Path | str,
        languages: Sequence[str],
        encoder: Encoder | HasEncode | None = None,
        validation: ValidationConfig | None = None,
    ) -> AudioDataset:
        """Read and validate a manifest up front (audio headers included), then index it.

        Both steps' skips are in the returned dataset's ``report``.
        """
        path = Path(path)
        validation = validation or ValidationConfig(languages=languages)
        entries, report = validate_entries(
            read_manifest(path), manifest_root(path), validation, source=str(path)
        )
        on_error = validation.on_error
        dataset = cls(
            entries,
            manifest_root(path),
            languages,
            encoder,
            validation.sample_rate,
            on_error,
            str(path),
        )
        report.kept = dataset.report.kept
        for reason, items in dataset.report.skipped.items():
            report.skipped.setdefault(reason, []).extend(items)
        dataset.report = report
        return dataset

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        audio = load_audio(entry.audio_path(self.root), self.sample_rate)
        return Sample(
            waveform=torch.from_numpy(audio),
            targets=torch.tensor(self.targets[index], dtype=torch.long),
            lang_id=self.lang_ids[index],
            text=entry.text,
            index=index,
        )
