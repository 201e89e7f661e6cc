"""``lass train evaluate``: CER/WER per language, greedy and beam search (with and without
the language model), and language-identification accuracy; JSON and Markdown reports.

Error rates are corpus-level per language (jiwer: total edits / total reference length),
references normalised with ``Vocabulary.normalize`` for their language (the same text the
model was trained to emit). The "average" row is the unweighted mean over languages, so a
low-resource language counts as much as a high-resource one. Deterministic: the model runs
in eval mode without gradients, on batches formed in a fixed order (longest first, ties by
language and path), and decoding has no randomness.

Conditions: an utterance whose ``speaker`` no training clip has is ``unseen``, one whose
speaker some training clip has is ``seen`` (the training speakers come from the
``train.jsonl`` beside the evaluated manifest, or are passed in). When a split holds unseen
utterances, the report gives every figure per condition too: the synthetic corpus's
held-out voices (and engines) are scored apart from the voices the model trained on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch

from model.atomic import atomic_write_text
from model.beam_search import DEFAULT_BEAM_WIDTH
from model.decoding import BeamConfig, BeamDecoders, ColumnCache, Transcript, greedy_decode_batch
from model.network import LassModel
from model.train.data.audio_io import AudioError, load_audio
from model.train.data.manifest import ManifestEntry, manifest_root, read_manifest
from model.train.paths import recorded_path
from model.train.progress import progress_bar
from model.vocab import Vocabulary

GREEDY, BEAM, BEAM_LM = "greedy", "beam", "beam_lm"
SEEN, UNSEEN = "seen", "unseen"
CONDITIONS = (SEEN, UNSEEN)
METHODS = (GREEDY, BEAM, BEAM_LM)
METHOD_TITLES = {GREEDY: "greedy", BEAM: "beam", BEAM_LM: "beam+LM"}


@dataclass
class UtteranceResult:
    """One utterance's reference and each method's hypothesis."""

    audio: str
    language: str
    reference: str
    hypotheses: dict[str, str]
    predicted_language: str | None = None
    speaker: str | None = None
    condition: str | None = None  # SEEN or UNSEEN; None: no speaker or no training speakers


@dataclass
class LanguageResult:
    """Scores of one language; ``cer``/``wer`` map a method to its error rate (0..1+)."""

    language: str
    utterances: int
    audio_seconds: float
    cer: dict[str, float] = field(default_factory=dict)
    wer: dict[str, float] = field(default_factory=dict)
    lid_accuracy: float | None = None


@dataclass
class EvalReport:
    """Everything ``evaluate`` measured."""

    languages: dict[str, LanguageResult]
    methods: list[str]
    skipped: dict[str, int]  # reason -> utterances left out
    settings: dict[str, Any]
    utterances: list[UtteranceResult] = field(default_factory=list)
    # condition -> language -> scores; empty unless the split holds unseen speakers
    conditions: dict[str, dict[str, LanguageResult]] = field(default_factory=dict)

    def average(self, metric: str, method: str, condition: str | None = None) -> float | None:
        """Unweighted mean over the languages that have ``method`` (None when none do), of
        every utterance or of one condition's."""
        values = [
            getattr(r, metric)[method]
            for r in self._results(condition).values()
            if method in getattr(r, metric)
        ]
        return sum(values) / len(values) if values else None

    def lid_accuracy(self, condition: str | None = None) -> float | None:
        """Unweighted mean LID accuracy over languages (None without a LID head)."""
        values = [
            r.lid_accuracy for r in self._results(condition).values() if r.lid_accuracy is not None
        ]
        return sum(values) / len(values) if values else None

    def _results(self, condition: str | None) -> dict[str, LanguageResult]:
        return self.languages if condition is None else self.conditions.get(condition, {})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``write_json`` writes; bundles embed it as metrics)."""
        return {
            "methods": self.methods,
            "languages": {k: asdict(v) for k, v in self.languages.items()},
            "average": {
                metric: {m: self.average(metric, m) for m in self.methods}
                for metric in ("cer", "wer")
            },
            "lid_accuracy": self.lid_accuracy(),
            "conditions": {
                c: {
                    "languages": {k: asdict(v) for k, v in langs.items()},
                    "average": {
                        metric: {m: self.average(metric, m, c) for m in self.methods}
                        for metric in ("cer", "wer")
                    },
                    "lid_accuracy": self.lid_accuracy(c),
                }
                for c, langs in self.conditions.items()
            },
            "skipped": self.skipped,
            "settings": self.settings,
            "utterances": [asdict(u) for u in self.utterances],
        }

    def write_json(self, path: Path | str) -> Path:
        """Write ``to_dict()`` atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    def to_markdown(self) -> str:
        """A table: one row per language and an average row; error rates in percent. With
        conditions, one more table per condition (``seen``, ``unseen``) follows."""
        lines = self._table(None)
        for condition in self.conditions:
            lines += ["", f"Condition **{condition}**:", ""]
            lines += self._table(condition)
        if self.skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            lines.append("")
            lines.append(f"Skipped utterances: {reasons}.")
        return "\n".join(lines) + "\n"

    def _table(self, condition: str | None) -> list[str]:
        results = self._results(condition)
        head = ["language", "utts", "audio (s)"]
        head += [f"CER {METHOD_TITLES[m]}" for m in self.methods]
        head += [f"WER {METHOD_TITLES[m]}" for m in self.methods]
        head.append("LID acc")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def pct(x: float | None) -> str:
            return "—" if x is None else f"{100 * x:.1f}"

        for lang in sorted(results):
            r = results[lang]
            cells = [lang, str(r.utterances), f"{r.audio_seconds:.1f}"]
            cells += [pct(r.cer.get(m)) for m in self.methods]
            cells += [pct(r.wer.get(m)) for m in self.methods]
            cells.append(pct(r.lid_accuracy))
            lines.append("| " + " | ".join(cells) + " |")
        total_utts = sum(r.utterances for r in results.values())
        total_audio = sum(r.audio_seconds for r in results.values())
        cells = ["**average**", str(total_utts), f"{total_audio:.1f}"]
        cells += [pct(self.average("cer", m, condition)) for m in self.methods]
        cells += [pct(self.average("wer", m, condition)) for m in self.methods]
        cells.append(pct(self.lid_accuracy(condition)))
        lines.append("| " + " | ".join(cells) + " |")
        return lines

    def write_markdown(self, path: Path | str) -> Path:
        """Write ``to_markdown()`` atomically."""
        return atomic_write_text(path, self.to_markdown())


@dataclass(frozen=True)
class _Item:
    entry: ManifestEntry
    path: Path
    reference: str
    name: str  # how the report names the audio file


def _select(
    entries: Sequence[ManifestEntry],
    root: Path,
    vocab: Vocabulary,
    model_languages: Sequence[str],
    languages: Sequence[str] | None,
    skipped: Counter[str],
    name: Callable[[Path], str],
) -> list[_Item]:
    wanted = set(languages) if languages is not None else None
    known = set(model_languages) & set(vocab.languages)
    items = []
    for e in entries:
        if wanted is not None and e.language not in wanted:
            continue
        if e.language not in known:
            skipped["language not in model"] += 1
            continue
        reference = vocab.normalize(e.text, e.language)
        if not reference:
            skipped["empty reference"] += 1
            continue
        path = e.audio_path(root)
        items.append(_Item(e, path, reference, name(path)))
    # Longest first keeps padding low; the tie-break makes the order independent of input.
    items.sort(key=lambda it: (-it.entry.duration, it.entry.language, str(it.path)))
    return items


def evaluate(
    model: LassModel,
    vocab: Vocabulary,
    entries: Sequence[ManifestEntry] | Path | str,
    languages: Sequence[str] | None = None,
    lm_paths: Mapping[str, Path] | None = None,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    methods: Sequence[str] = METHODS,
    root: Path | None = None,
    beam_config: BeamConfig | None = None,
    keep_utterances: bool = True,
    progress: bool = False,
    relative_to: Path | None = None,
    seen_speakers: Collection[str] | None = None,
) -> EvalReport:
    """Transcribe ``entries`` (a manifest path or entries) and score them per language.

    ``languages``: restrict to these (default: every language of the model and vocabulary
    found in the entries). ``lm_paths``: language -> ARPA/binary LM for "beam_lm"
    (languages without one get no beam+LM score). ``root``: folder that relative audio
    paths resolve against when entries are given as a list (default: the working folder).
    ``device``: where the batches go (default: the model's device; the model is not moved).
    Unreadable audio, empty references and unknown languages are skipped and counted.
    ``progress``: show a progress bar on stderr, in seconds of audio, with an ETA.
    ``relative_to``: name audio files and LMs in the report relative to this folder (the
    trainer passes its work folder, see ``model.train.paths``), else as given.
    ``seen_speakers``: the speakers of the training clips, which make an utterance ``seen``
    (any other speaker is ``unseen``); default: those of ``root/train.jsonl`` when it exists.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown evaluation methods {unknown}; choose from {list(METHODS)}")
    if isinstance(entries, str | Path):
        root = manifest_root(entries)
        entries = read_manifest(entries)
    root = root or Path.cwd()
    lm_paths = dict(lm_paths or {})
    skipped: Counter[str] = Counter()

    def name(path: Path) -> str:
        return str(path) if relative_to is None else recorded_path(path, relative_to)

    items = _select(entries, root, vocab, model.languages, languages, skipped, name)
    if seen_speakers is None:
        seen_speakers = training_speakers(root)

    config = beam_config or BeamConfig(beam_width=beam_width)
    beams = BeamDecoders(vocab, lm_paths, config)
    columns = ColumnCache(vocab)
    first = next(model.parameters())
    device = torch.device(device) if device is not None else first.device
    dtype = first.dtype
    was_training = model.training
    model.eval()
    results: list[UtteranceResult] = []
    bar = progress_bar(not progress)
    # Batches go longest first: counted in seconds of audio, the ETA does not drift.
    task = bar.add_task(
        "evaluate", total=sum(it.entry.duration for it in items), info="seconds of audio"
    )
    bar.start()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            loaded = []
            for it in chunk:
                try:
                    loaded.append((it, load_audio(it.path)))
                except AudioError:
                    skipped["unreadable audio"] += 1
            if loaded:
                results += _run_batch(model, loaded, device, dtype, columns, beams, methods)
            bar.advance(task, sum(it.entry.duration for it in chunk))
    finally:
        bar.stop()
        model.train(was_training)
        beams.close()

    report = EvalReport(
        languages={},
        methods=[m for m in methods if m != BEAM_LM or lm_paths],
        skipped=dict(skipped),
        settings={
            "beam": asdict(config),
            "batch_size": batch_size,
            "lm": {k: name(Path(v)) for k, v in sorted(lm_paths.items())},
            "normalization": "Vocabulary.normalize",
        },
        utterances=results if keep_utterances else [],
    )
    durations = {it.name: it.entry.duration for it in items}
    has_lid = model.lid_head is not None
    report.languages = summarize(results, report.methods, set(lm_paths), durations, has_lid)
    if seen_speakers is not None:
        seen = set(seen_speakers)
        for r in results:
            if r.speaker is not None:
                r.condition = SEEN if r.speaker in seen else UNSEEN
    # Per-condition figures only where there is something unseen to set apart.
    if any(r.condition == UNSEEN for r in results):
        report.settings["conditions"] = "unseen: a speaker no training clip has"
        for condition in CONDITIONS:
            subset = [r for r in results if r.condition == condition]
            report.conditions[condition] = summarize(
                subset, report.methods, set(lm_paths), durations, has_lid
            )
    return report


def training_speakers(root: Path) -> set[str] | None:
    """Speakers of ``root/train.jsonl``; None (no conditions) without that file or without
    speakers in it (a corpus built with its test split only has an empty one)."""
    train = root / "train.jsonl"
    if not train.is_file():
        return None
    speakers = {e.speaker for e in read_manifest(train) if e.speaker is not None}
    return speakers or None


def summarize(
    results: Sequence[UtteranceResult],
    methods: Sequence[str],
    lm_languages: set[str],
    durations: Mapping[str, float],
    has_lid: bool,
) -> dict[str, LanguageResult]:
    """Per-language corpus CER/WER of each method (beam+LM only where the language has an
    LM) and LID accuracy (when ``has_lid``); ``durations`` maps audio path -> seconds."""
    by_lang: dict[str, list[UtteranceResult]] = {}
    for r in results:
        by_lang.setdefault(r.language, []).append(r)
    out = {}
    for lang in sorted(by_lang):
        rs = by_lang[lang]
        refs = [r.reference for r in rs]
        res = LanguageResult(lang, len(rs), sum(durations.get(r.audio, 0.0) for r in rs))
        for m in methods:
            if m == BEAM_LM and lang not in lm_languages:
                continue
            hyps = [r.hypotheses[m] for r in rs]
            res.cer[m] = float(jiwer.cer(refs, hyps))
            res.wer[m] = float(jiwer.wer(refs, hyps))
        if has_lid:
            res.lid_accuracy = sum(r.predicted_language == lang for r in rs) / len(rs)
        out[lang] = res
    return out


def _run_batch(
    model: LassModel,
    loaded: list[tuple[_Item, np.ndarray]],
    device: torch.device,
    dtype: torch.dtype,
    columns: ColumnCache,
    beams: BeamDecoders,
    methods: Sequence[str],
) -> list[UtteranceResult]:
    """One forward pass over a padded mixed-language batch, then every decoding method."""
    lengths = torch.tensor([len(a) for _, a in loaded], dtype=torch.long)
    waves = torch.zeros(len(loaded), int(lengths.max()), dtype=dtype)
    for i, (_, audio) in enumerate(loaded):
        waves[i, : len(audio)] = torch.from_numpy(audio).to(dtype)
    langs = [it.entry.language for it, _ in loaded]
    lang_ids = torch.tensor([model.languages.index(lang) for lang in langs], dtype=torch.long)
    with torch.no_grad():
        out = model(waves.to(device), lengths.to(device), lang_ids.to(device))
    logits = out.logits.float().cpu()
    frames = out.lengths.cpu()
    decoded: dict[str, list[Transcript | None]] = {}
    if GREEDY in methods:
        decoded[GREEDY] = list(greedy_decode_batch(logits, frames, langs, columns))
    if BEAM in methods:
        decoded[BEAM] = list(beams.decode_batch(logits, frames, langs, use_lm=False))
    with_lm = [i for i, lang in enumerate(langs) if lang in beams.lm_paths]
    if BEAM_LM in methods and with_lm:
        lm_out = beams.decode_batch(
            logits[with_lm], frames[with_lm], [langs[i] for i in with_lm], use_lm=True
        )
        column: list[Transcript | None] = [None] * len(langs)
        for i, t in zip(with_lm, lm_out, strict=True):
            column[i] = t
        decoded[BEAM_LM] = column
    predicted: list[str | None] = [None] * len(loaded)
    lid_logits = out.lid_logits
    if lid_logits is None and model.lid_head is not None:  # an "encoder" head: its own pass
        with torch.no_grad():
            lid_logits = model.identify_language(waves.to(device), lengths.to(device))
    if lid_logits is not None:
        predicted = [model.languages[int(i)] for i in lid_logits.argmax(dim=-1).tolist()]
    return [
        UtteranceResult(
            audio=it.name,
            language=it.entry.language,
            reference=it.reference,
            hypotheses={m: tr.text for m, ts in decoded.items() if (tr := ts[i]) is not None},
            predicted_language=predicted[i],
            speaker=it.entry.speaker,
        )
        for i, (it, _) in enumerate(loaded)
    ]
