"""The synthetic multilingual corpus: TTS engines speaking real sentences in many languages.

Sentences come from Debian text packages (``text_sources``) or user text files. Each
language's sentences are shuffled with the seed and split BY SENTENCE: test and dev
sentences never occur in train. Train utterances cycle through the train sentences
with a random voice each (espeak-ng variant, rate, pitch; or, for ``synthesizer_share`` of
them, another engine's voice from ``synthesizers``) until the language's target duration
is reached (a sentence may be heard several times, in different voices); a fraction of
them are augmented (speed, reverb, noise, telephone band, codecs, gain).

Held-out conditions: voices in ``heldout_variants`` (espeak-ng) and ``heldout_voices``
(other engines) are never drawn for train or dev. When there are any, the test split
speaks each of its sentences twice: once by a training voice (the ``seen`` condition, the
very clips a config without held-out voices builds) and once by a held-out voice
(``unseen``). The config refuses a voice that is in both lists, so the two conditions are
disjoint by construction.

Everything is a function of the config (seed included): the same config on another
machine gives the same manifests and the same audio (up to float rounding in the
augmentation's FFTs: a 16-bit step at most).

Output folder::

    audio/<lang>/<split>/<lang>-<split>-<index>.wav   16 kHz mono 16-bit
    train.jsonl dev.jsonl test.jsonl                   manifests (paths relative)
    text/<lang>.txt                                    train sentences, for n-gram LMs
    corpus.json                                        config, sizes, alphabets, sources

Each language's ``source`` in corpus.json names where its sentences came from (Debian
packages with their installed versions, or the text file) and the sha256 of the cleaned
pool, so a later rebuild can tell whether it speaks the same sentences.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from model.train.data.augment import AugmentConfig, augment
from model.train.data.espeak import SAMPLE_RATE
from model.train.data.manifest import ManifestEntry, write_manifest
from model.train.data.synthesizers import (
    ESPEAK,
    SYNTHESIZERS,
    SynthVoice,
    can_speak,
    synthesize,
    voice_language,
)
from model.train.data.text_sources import (
    EXTRA_SOURCES,
    SOURCES,
    CleaningConfig,
    clean_sentences,
    load_language_text,
    pool_sha256,
    read_documents,
)
from model.train.progress import progress_bar

DEFAULT_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
# Rough speaking speed for the progress bar's estimate of a dev/test split's audio
# (espeak-ng at ~170 words a minute); the estimate is replaced once the split is built.
CHARS_PER_SECOND = 15.0
# The test split's conditions: voices some training clip uses, and voices none does.
SEEN, UNSEEN = "seen", "unseen"


@dataclass(frozen=True)
class SyntheticCorpusConfig:
    """What to build. Train duration per language: ``high_minutes`` for the languages in
    ``high_resource``, ``low_minutes`` for those in ``low_resource``, ``minutes[lang]``
    overriding either."""

    high_resource: tuple[str, ...] = ("en", "de", "es", "it")
    low_resource: tuple[str, ...] = ("pl", "ru", "cs", "pt", "fr", "nl")
    high_minutes: float = 120.0
    low_minutes: float = 15.0
    minutes: Mapping[str, float] = field(default_factory=dict)
    dev_sentences: int = 50  # per language, spoken once each
    test_sentences: int = 100
    seed: int = 0
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # espeak-ng voice variants ("" = default)
    rate_range: tuple[int, int] = (130, 210)  # words per minute
    pitch_range: tuple[int, int] = (25, 75)
    augment_prob: float = 0.5  # fraction of train utterances augmented
    augment_eval: bool = False  # augment dev/test too
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    # language -> text file (one sentence per line) used instead of the Debian source
    text_files: Mapping[str, str] = field(default_factory=dict)
    voices: Mapping[str, str] = field(default_factory=dict)  # language -> espeak-ng voice
    workers: int = 2
    chunk: int = 64  # utterances synthesized per round (the target is checked between rounds)
    # --- added for v2 (issue 19); at their defaults a config builds v1's corpus ---
    # language -> names of text_sources.EXTRA_SOURCES whose sentences join its pool
    extra_text: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # language -> engine -> voices that speak its training (and dev) clips besides
    # espeak-ng's language voice; an "espeak-ng" entry adds espeak-ng language voices
    # (accents such as "en-us"), each with every training variant.
    synthesizers: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    synthesizer_share: float = 0.0  # of a language's train clips, by its non-espeak voices
    # Voices only the test split's ``unseen`` condition uses.
    heldout_variants: tuple[str, ...] = ()  # espeak-ng variants
    heldout_voices: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = sorted(set(self.variants) & set(self.heldout_variants))
        if both:
            raise ValueError(f"espeak-ng variants both trained on and held out: {both}")
        if "" in self.heldout_variants:
            raise ValueError("the default voice ('' variant) cannot be held out")
        for table, name in (
            (self.synthesizers, "synthesizers"),
            (self.heldout_voices, "heldout_voices"),
        ):
            for language, engines in table.items():
                for engine, names in engines.items():
                    if engine not in SYNTHESIZERS:
                        raise ValueError(
                            f"{name}.{language}: unknown synthesizer {engine!r}: "
                            f"choose from {sorted(SYNTHESIZERS)}"
                        )
                    if engine == ESPEAK and name == "heldout_voices":
                        raise ValueError(
                            "hold espeak-ng voices out with heldout_variants, not heldout_voices"
                        )
                    # espeak-ng speaks every language; another engine's voice must be one
                    # it has, for this language.
                    wrong = [
                        v
                        for v in names
                        if engine != ESPEAK and voice_language(engine, v) != language
                    ]
                    if wrong:
                        raise ValueError(
                            f"{name}.{language}.{engine}: {wrong} are not {engine} voices "
                            f"for {language}"
                        )
        for language, engines in self.heldout_voices.items():
            for engine, names in engines.items():
                both = sorted(set(names) & set(self.synthesizers.get(language, {}).get(engine, ())))
                if both:
                    raise ValueError(
                        f"{language} {engine} voices both trained on and held out: {both}"
                    )
        if not 0.0 <= self.synthesizer_share <= 1.0:
            raise ValueError("synthesizer_share must lie in [0, 1]")

    @property
    def languages(self) -> list[str]:
        return [*self.high_resource, *self.low_resource]

    def target_seconds(self, language: str) -> float:
        if language in self.minutes:
            return 60.0 * float(self.minutes[language])
        high = language in self.high_resource
        return 60.0 * (self.high_minutes if high else self.low_minutes)

    def voice_for(self, language: str) -> str:
        if language in self.voices:
            return self.voices[language]
        return SOURCES[language].espeak_voice if language in SOURCES else language

    def train_voices(self, language: str) -> list[SynthVoice]:
        """Every voice (rate and pitch aside) a training clip of ``language`` may use."""
        return [v for pool in self._train_pools(language) for v in pool]

    def heldout_pool(self, language: str) -> list[list[SynthVoice]]:
        """The voices of the ``unseen`` condition, one list per engine (empty: none)."""
        main = self.voice_for(language)
        pools = []
        if self.heldout_variants:
            pools.append([SynthVoice(ESPEAK, f"{main}+{v}") for v in self.heldout_variants])
        for engine, names in sorted(self.heldout_voices.get(language, {}).items()):
            if names:
                pools.append([SynthVoice(engine, n) for n in names])
        return pools

    def _train_pools(self, language: str) -> list[list[SynthVoice]]:
        """[espeak-ng voices, other engines' voices]: the share picks between the two."""
        engines = self.synthesizers.get(language, {})
        accents = [self.voice_for(language), *engines.get(ESPEAK, ())]
        espeak = [
            SynthVoice(ESPEAK, f"{a}+{v}" if v else a) for a in accents for v in self.variants
        ]
        others = [
            SynthVoice(engine, n)
            for engine, names in sorted(engines.items())
            if engine != ESPEAK
            for n in names
        ]
        return [espeak, others]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["minutes"] = dict(self.minutes)
        d["text_files"] = dict(self.text_files)
        d["voices"] = dict(self.voices)
        d["extra_text"] = {k: list(v) for k, v in self.extra_text.items()}
        for key in ("synthesizers", "heldout_voices"):
            d[key] = {
                lang: {e: list(names) for e, names in engines.items()}
                for lang, engines in getattr(self, key).items()
            }
        # Keys added after v1 are left out at their defaults: a v1 config keeps its
        # dictionary and fingerprint, so v1 corpora and bundles still match their configs.
        for key, default in _V2_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        for key, default in _V2_AUGMENT_DEFAULTS.items():
            if d["augment"][key] == default:
                del d["augment"][key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticCorpusConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown corpus config keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "augment":
                kwargs[key] = AugmentConfig.from_dict(dict(value))
            elif key == "cleaning":
                kwargs[key] = CleaningConfig(**value)
            elif key in ("synthesizers", "heldout_voices"):
                kwargs[key] = {
                    lang: {engine: tuple(names) for engine, names in engines.items()}
                    for lang, engines in value.items()
                }
            elif key == "extra_text":
                kwargs[key] = {lang: tuple(names) for lang, names in value.items()}
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: Path | str) -> SyntheticCorpusConfig:
        with Path(path).open("rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data.get("corpus", data))

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_V2_DEFAULTS: dict[str, Any] = {
    "extra_text": {},
    "synthesizers": {},
    "synthesizer_share": 0.0,
    "heldout_variants": (),
    "heldout_voices": {},
}
_V2_AUGMENT_DEFAULTS: dict[str, Any] = {
    "telephone_prob": 0.0,
    "codec_prob": 0.0,
    "codecs": AugmentConfig().codecs,
}


@dataclass
class CorpusSplits:
    """The built corpus: manifests' entries (audio relative to ``root``) and its summary."""

    root: Path
    train: list[ManifestEntry]
    dev: list[ManifestEntry]
    test: list[ManifestEntry]
    summary: dict[str, Any]

    def manifest(self, split: str) -> Path:
        return self.root / f"{split}.jsonl"

    @property
    def alphabets(self) -> dict[str, list[str]]:
        return {lang: info["alphabet"] for lang, info in self.summary["languages"].items()}


@dataclass(frozen=True)
class _Job:
    """One utterance to synthesize (picklable, for the worker pool)."""

    text: str
    voice: SynthVoice
    path: str
    augment_seed: int | None  # None: clean
    augment: AugmentConfig


def _run_job(job: _Job) -> tuple[float, dict[str, float]]:
    """Synthesize (and augment) one utterance to a 16-bit WAV; returns (seconds, effects)."""
    samples = synthesize(job.text, job.voice)
    applied: dict[str, float] = {}
    if job.augment_seed is not None:
        samples, applied = augment(samples, np.random.default_rng(job.augment_seed), job.augment)
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, samples, SAMPLE_RATE, subtype="PCM_16")
    return len(samples) / SAMPLE_RATE, applied


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the pool supplies the parallelism


def _seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _texts(config: SyntheticCorpusConfig, language: str) -> tuple[list[str], dict[str, Any]]:
    """Cleaned sentences for a language and where they came from."""
    extras = [EXTRA_SOURCES[name] for name in config.extra_text.get(language, ())]
    if language in config.text_files:
        path = Path(config.text_files[language])
        lines = path.read_text(encoding="utf-8").splitlines()
        script = SOURCES[language].script if language in SOURCES else ""
        clean = clean_sentences(lines, language, script, config.cleaning)
        source: dict[str, Any] = {"file": str(path)}
    elif extras:
        src = SOURCES[language]
        for extra in extras:
            if not extra.available():
                raise FileNotFoundError(
                    f"no text for {language} from {extra.debian_packages}: install them"
                )
        # v1's documents first, then each extra source's (in the config's order), cleaned
        # as one pool: a sentence in two sources is kept once.
        documents = [src.documents(), *(read_documents(e.files()) for e in extras)]
        clean = clean_sentences(
            (doc for docs in documents for doc in docs),
            language,
            src.script,
            config.cleaning,
            # Translated manual pages keep English paragraphs: filter when any source does.
            src.filter_english or any(e.filter_english for e in extras),
        )
        packages = [*src.debian_packages, *(p for e in extras for p in e.debian_packages)]
        versions = dict(src.package_versions())
        for extra in extras:
            versions.update(extra.package_versions())
        source = {
            "debian_packages": packages,
            "package_versions": versions,
            "extra_sources": list(config.extra_text[language]),
        }
    else:
        clean = load_language_text(language, config=config.cleaning)
        src = SOURCES[language]
        source = {
            "debian_packages": list(src.debian_packages),
            # Another version may hold other text: the pool and its seeded split change.
            "package_versions": src.package_versions(),
        }
    source["dropped"] = dict(clean.dropped)
    source["sentences_available"] = len(clean.sentences)
    # The split shuffles the whole pool: one hash says whether a rebuild can match.
    source["pool_sha256"] = pool_sha256(clean.sentences)
    return clean.sentences, source


def _plan_language(
    config: SyntheticCorpusConfig, language: str
) -> tuple[list[str], dict[str, Any], dict[str, list[str]]]:
    """Sentences, their source, and the split by sentence (seeded shuffle, test/dev first)."""
    sentences, source = _texts(config, language)
    order = list(sentences)
    np.random.default_rng(_seed(config.seed, language, "sentences")).shuffle(order)
    n_test = min(config.test_sentences, len(order) // 3)
    n_dev = min(config.dev_sentences, len(order) // 3)
    parts = {
        "test": order[:n_test],
        "dev": order[n_test : n_test + n_dev],
        "train": order[n_test + n_dev :],
    }
    if any(
        not parts[s]
        for s, want in (
            ("train", 1),
            ("dev", config.dev_sentences),
            ("test", config.test_sentences),
        )
        if want
    ):
        raise ValueError(
            f"{language}: too few sentences ({len(order)}) for train/dev/test splits "
            f"({source.get('file') or source.get('debian_packages')})"
        )
    return sentences, source, parts


def _voice_stream(
    config: SyntheticCorpusConfig, language: str, split: str, condition: str = SEEN
) -> Iterator[SynthVoice]:
    """Random voices of a split. A config with only espeak-ng voices draws exactly v1's
    numbers (variant, rate, pitch), so its clips are v1's."""
    if condition == SEEN:
        rng = np.random.default_rng(_seed(config.seed, language, split, "voice"))
        espeak, others = config._train_pools(language)
        # v1 drew variants of the language's own voice: keep its draws when that is all.
        v1 = len(espeak) == len(config.variants)
        share = config.synthesizer_share if others else 0.0
        pools = [espeak, others]
    else:
        rng = np.random.default_rng(_seed(config.seed, language, split, condition, "voice"))
        pools = config.heldout_pool(language)
        v1, share = False, 0.0
    while True:
        if v1 and share == 0.0:
            pool = pools[0]
        elif condition == SEEN:
            pool = pools[1] if rng.random() < share else pools[0]
        else:  # each held-out engine equally often
            pool = pools[int(rng.integers(len(pools)))]
        voice = pool[int(rng.integers(len(pool)))]
        rate = int(rng.integers(config.rate_range[0], config.rate_range[1] + 1))
        pitch = int(rng.integers(config.pitch_range[0], config.pitch_range[1] + 1))
        yield SynthVoice(voice.synthesizer, voice.name, rate, pitch)


def _voice_for_text(voices: Iterator[SynthVoice], text: str, fallback: str) -> SynthVoice:
    """The stream's next voice, or espeak-ng's ``fallback`` voice at its rate and pitch when
    the engine cannot take the text's letters (festival's 8-bit voices)."""
    voice = next(voices)
    if can_speak(voice, text):
        return voice
    return SynthVoice(ESPEAK, fallback, voice.rate, voice.pitch)


def _utterances(
    config: SyntheticCorpusConfig,
    language: str,
    split: str,
    sentences: list[str],
    cycle: bool,
    condition: str = SEEN,
) -> Iterator[tuple[str, SynthVoice, int | None]]:
    """(text, voice, augment seed) in order; train cycles through its sentences forever."""
    voices = _voice_stream(config, language, split, condition)
    fallback = config.voice_for(language)
    rng = np.random.default_rng(_seed(config.seed, language, split, "augment"))
    do_augment = split == "train" or config.augment_eval
    epoch = 0
    while True:
        order = list(sentences)
        if epoch > 0:  # a new order each pass, so neighbours differ
            np.random.default_rng(_seed(config.seed, language, split, epoch)).shuffle(order)
        for text in order:
            flip = rng.random()
            seed = int(rng.integers(2**62))
            voice = _voice_for_text(voices, text, fallback)
            yield text, voice, seed if do_augment and flip < config.augment_prob else None
        epoch += 1
        if not cycle or not sentences:
            return


def _synthesize_split(
    config: SyntheticCorpusConfig,
    language: str,
    split: str,
    sentences: list[str],
    target_seconds: float | None,
    out_dir: Path,
    pool: Executor | None,
    log: Callable[[str], None],
    advance: Callable[[float], None] | None = None,
    condition: str = SEEN,
    first_index: int = 0,
) -> list[ManifestEntry]:
    """Synthesize a split in rounds of ``config.chunk``; train stops at exactly the first
    utterance that reaches ``target_seconds`` (the surplus of the last round is deleted).
    ``advance`` gets the seconds of audio each round kept. ``condition``: the voices
    (``seen``: training voices; ``unseen``: held-out ones); files are numbered from
    ``first_index``."""
    cycle = target_seconds is not None
    stream = _utterances(config, language, split, sentences, cycle, condition)
    entries: list[ManifestEntry] = []
    total = 0.0
    index = first_index
    while True:
        jobs: list[_Job] = []
        for text, voice, seed in stream:
            rel = f"audio/{language}/{split}/{language}-{split}-{index:06d}.wav"
            jobs.append(_Job(text, voice, str(out_dir / rel), seed, config.augment))
            index += 1
            if len(jobs) == config.chunk:
                break
        if not jobs:
            break
        results = list(pool.map(_run_job, jobs)) if pool else [_run_job(j) for j in jobs]
        before = total
        for job, (seconds, _) in zip(jobs, results, strict=True):
            if target_seconds is not None and total >= target_seconds:
                Path(job.path).unlink()  # surplus of the last round
                continue
            rel = str(Path(job.path).relative_to(out_dir))
            speaker = job.voice.speaker
            entries.append(ManifestEntry(rel, job.text, language, round(seconds, 4), speaker))
            total += seconds
        if advance is not None:
            advance(total - before)
        if target_seconds is not None and total >= target_seconds:
            break
    label = f"{split} ({condition})" if condition != SEEN else split
    log(f"{language} {label}: {len(entries)} utterances, {total / 60:.1f} min")
    return entries


ALL_SPLITS = ("train", "dev", "test")


def build_synthetic_corpus(
    config: SyntheticCorpusConfig,
    out_dir: Path | str,
    log: Callable[[str], None] | None = None,
    only: Sequence[str] = ALL_SPLITS,
    progress: bool = False,
) -> CorpusSplits:
    """Build the corpus into ``out_dir`` (atomically: a ``.partial`` sibling, then rename).

    ``only`` names the splits to synthesize (the others get empty manifests): each split's
    sentences and voices are seeded per (language, split), so ``only=("test",)`` gives the
    very test clips of the full build, e.g. to re-evaluate a shipped model without
    synthesizing hours of training speech. If ``out_dir`` already holds a corpus built from
    the same config with at least those splits, it is returned as is. ``progress``: show a
    progress bar on stderr, in seconds of audio (train's target, dev/test estimated from
    their text until built), with an ETA.
    """
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    unknown = sorted(set(only) - set(ALL_SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {list(ALL_SPLITS)}")
    existing = out_dir / "corpus.json"
    if existing.is_file():
        summary = json.loads(existing.read_text(encoding="utf-8"))
        built = set(summary.get("splits", ALL_SPLITS))
        if summary.get("fingerprint") == config.fingerprint() and set(only) <= built:
            return load_corpus(out_dir)
        raise FileExistsError(f"{out_dir} holds a corpus built from another config or splits")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.monotonic()
    splits: dict[str, list[ManifestEntry]] = {"train": [], "dev": [], "test": []}
    languages: dict[str, Any] = {}
    bar = progress_bar(not progress)
    pool: ProcessPoolExecutor | None = None
    if config.workers > 1:
        pool = ProcessPoolExecutor(
            config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
    try:
        # All texts first: a language without enough sentences fails before any synthesis.
        plans = {lang: _plan_language(config, lang) for lang in config.languages}
        expected = {
            (language, split): config.target_seconds(language)
            if split == "train"
            else sum(map(len, texts)) / CHARS_PER_SECOND
            for language, (_, _, parts) in plans.items()
            for split, texts in parts.items()
            if split in only
        }
        for language in plans:
            if "test" in only and config.heldout_pool(language):  # spoken again, unseen
                expected[language, "test"] *= 2
        bar_total = sum(expected.values())
        task = bar.add_task("corpus", total=bar_total, info="")
        bar.start()
        advance = functools.partial(bar.advance, task)
        for language, (sentences, source, parts) in plans.items():
            info: dict[str, Any] = {"voice": config.voice_for(language), "source": source}
            for split, texts in parts.items():
                if split not in only:
                    continue
                bar.update(task, info=f"{language} {split}, seconds of audio")
                target = config.target_seconds(language) if split == "train" else None
                entries = _synthesize_split(
                    config, language, split, texts, target, tmp, pool, say, advance
                )
                if split == "test" and config.heldout_pool(language):
                    # The same sentences again, each by a voice no training clip uses.
                    unseen = _synthesize_split(
                        config, language, split, texts, None, tmp, pool, say, advance,
                        condition=UNSEEN, first_index=len(entries),
                    )  # fmt: skip
                    info["conditions"] = {
                        SEEN: {"utterances": len(entries)},
                        UNSEEN: {
                            "utterances": len(unseen),
                            "speakers": sorted({e.speaker or "" for e in unseen}),
                        },
                    }
                    entries = entries + unseen
                # The total follows what was built (dev/test were estimates, train overshoots).
                bar_total += sum(e.duration for e in entries) - expected[language, split]
                bar.update(task, total=bar_total)
                splits[split].extend(entries)
                info[split] = {
                    "utterances": len(entries),
                    "sentences": len(set(e.text for e in entries)),
                    "seconds": round(sum(e.duration for e in entries), 2),
                }
            train_text = sorted(set(parts["train"]))
            (tmp / "text").mkdir(exist_ok=True)
            (tmp / "text" / f"{language}.txt").write_text(
                "\n".join(train_text) + "\n", encoding="utf-8"
            )
            info["alphabet"] = sorted({ch for s in sentences for ch in s} | {" "})
            if config.heldout_pool(language) or config.synthesizers.get(language):
                info["train_speakers"] = sorted({v.speaker for v in config.train_voices(language)})
            languages[language] = info
    finally:
        bar.stop()  # a no-op when it never started
        if pool is not None:
            pool.shutdown()
    for split, entries in splits.items():
        write_manifest(tmp / f"{split}.jsonl", entries)
    summary = {
        "fingerprint": config.fingerprint(),
        "splits": [s for s in ALL_SPLITS if s in only],
        "config": config.to_dict(),
        "sample_rate": SAMPLE_RATE,
        "languages": languages,
        "hours": {s: round(sum(e.duration for e in v) / 3600, 4) for s, v in splits.items()},
        "build_seconds": round(time.monotonic() - start, 1),
    }
    (tmp / "corpus.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return CorpusSplits(out_dir, splits["train"], splits["dev"], splits["test"], summary)


def load_corpus(out_dir: Path | str) -> CorpusSplits:
    """A corpus written by :func:`build_synthetic_corpus`."""
    from model.train.data.manifest import read_manifest

    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
    return CorpusSplits(
        out_dir,
        read_manifest(out_dir / "train.jsonl"),
        read_manifest(out_dir / "dev.jsonl"),
        read_manifest(out_dir / "test.jsonl"),
        summary,
    )
