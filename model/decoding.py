"""CTC decoding per language: greedy and pyctcdecode beam search, with word timestamps.

Every language decodes over its own alphabet only: the logits of the shared vocabulary
``[B, F, V]`` are sliced to the language's columns (blank first, then its characters,
``Vocabulary.language_token_ids``) and renormalised there with a log-softmax. A frame is
``frame_seconds`` long, the model's conv stride over the sample rate (a ``LanguageColumns``
carries it: the service passes the served bundle's, ``FRAME_SECONDS`` = 20 ms is every
preset's); a word spans from the first frame of its first character to the end of the last
frame of its last character.

Both decoders take a batch ``logits [B, F, V]``, ``lengths [B]`` (valid frames) and one
language per sample, so a mixed-language batch from the service decodes in one call.
``BeamDecoders`` builds one pyctcdecode decoder per (language, with LM or not) once and
caches it (loading an LM is slow); decoders are safe to use from worker threads: the
cache is guarded by a lock and pyctcdecode keeps all per-call state local.

Beam search has a wall-clock budget per utterance (``BeamConfig.time_budget_s``): with one,
``BeamDecoders`` runs every search in a child process (``model.beam_search``) that is
killed when the budget passes (``DecodeBudgetExceededError``); ``None`` searches in the
calling thread, unbounded.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from model.beam_search import (
    BUILD_TIMEOUT_S,
    DEFAULT_BEAM_WIDTH,
    BeamProcess,
    BeamSearchError,
    DecodeBudgetExceededError,
    SearchResult,
    build_decoder,
    search,
)
from model.config import FRAME_STRIDE, SAMPLE_RATE

__all__ = ["BeamSearchError", "DecodeBudgetExceededError"]

FRAME_SECONDS = FRAME_STRIDE / SAMPLE_RATE  # every preset's; a checkpoint may differ
BLANK_ID = 0

# pyctcdecode logs an INFO/WARNING line per decoder about alphabet style and small unigram
# sets (ours are small by design in tests); they carry no information for lass's users.
logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
log = logging.getLogger(__name__)


class VocabularyLike(Protocol):
    """What decoding needs from ``model.vocab.Vocabulary``."""

    tokens: list[str]

    def language_token_ids(self, language: str) -> list[int]: ...

    def normalize(self, text: str, language: str) -> str: ...


@dataclass(frozen=True)
class Word:
    """One recognised word; times in seconds from the start of the decoded audio."""

    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    """A run of words without a long pause, for subtitle-style output."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...]
    avg_logprob: float | None


@dataclass
class Transcript:
    """The decoding of one utterance.

    ``logprob``: natural-log score of the decoded CTC path (greedy: sum of the chosen
    frames' log-probabilities; beam: pyctcdecode's acoustic score). ``lm_score``: beam
    search's combined score with the LM and hotwords (None for greedy).
    """

    text: str
    language: str
    words: list[Word]
    duration: float
    logprob: float | None = None
    lm_score: float | None = None

    def segments(self, max_gap: float = 0.6, max_words: int = 40) -> list[Segment]:
        """Split the words at pauses longer than ``max_gap`` s or after ``max_words``."""
        groups: list[list[Word]] = []
        for w in self.words:
            if groups and w.start - groups[-1][-1].end <= max_gap and len(groups[-1]) < max_words:
                groups[-1].append(w)
            else:
                groups.append([w])
        out = []
        for g in groups:
            probs = [w.probability for w in g if w.probability is not None]
            avg = (
                sum(math.log(max(p, 1e-12)) for p in probs) / len(probs)
                if len(probs) == len(g)
                else None
            )
            text = " ".join(w.word for w in g)
            out.append(Segment(g[0].start, g[-1].end, text, tuple(g), avg))
        return out

    def shifted(self, offset: float) -> Transcript:
        """The same transcript with every time moved by ``offset`` seconds (for chunks)."""
        words = [replace(w, start=w.start + offset, end=w.end + offset) for w in self.words]
        return replace(self, words=words)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "text": self.text,
            "language": self.language,
            "duration": self.duration,
            "logprob": self.logprob,
            "lm_score": self.lm_score,
            "words": [
                {"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                for w in self.words
            ],
        }


@dataclass(frozen=True)
class LanguageColumns:
    """A language's slice of the vocabulary: ``ids[0]`` is the blank."""

    language: str
    ids: tuple[int, ...]
    labels: tuple[str, ...]  # pyctcdecode labels: "" for the blank, " " separates words
    frame_seconds: float = FRAME_SECONDS  # how long one logit frame is

    @classmethod
    def of(
        cls, vocab: VocabularyLike, language: str, frame_seconds: float = FRAME_SECONDS
    ) -> LanguageColumns:
        ids = list(vocab.language_token_ids(language))
        if BLANK_ID in ids:
            ids.remove(BLANK_ID)
        ids.insert(0, BLANK_ID)
        labels = ["", *(vocab.tokens[i] for i in ids[1:])]
        return cls(language, tuple(ids), tuple(labels), frame_seconds)


def language_log_probs(logits: Tensor, columns: LanguageColumns) -> Tensor:
    """Log-probabilities over one language's columns: ``[..., V] -> [..., len(columns)]``."""
    index = torch.tensor(columns.ids, device=logits.device)
    return torch.log_softmax(logits.index_select(-1, index).float(), dim=-1)


def _check_batch(
    logits: Tensor, lengths: Tensor | Sequence[int], languages: Sequence[str]
) -> list[int]:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, F, V], got shape {tuple(logits.shape)}")
    lens = [int(x) for x in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
    if len(lens) != logits.shape[0] or len(languages) != logits.shape[0]:
        raise ValueError(
            f"batch of {logits.shape[0]} logits with {len(lens)} lengths "
            f"and {len(languages)} languages"
        )
    if any(n < 0 or n > logits.shape[1] for n in lens):
        raise ValueError(f"lengths {lens} outside 0..{logits.shape[1]} frames")
    return lens


def _group_by_language(languages: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, lang in enumerate(languages):
        groups.setdefault(lang, []).append(i)
    return groups


class ColumnCache:
    """``LanguageColumns`` per language, computed once (thread-safe: dict writes are atomic
    and recomputing is harmless)."""

    def __init__(self, vocab: VocabularyLike, frame_seconds: float = FRAME_SECONDS) -> None:
        self.vocab = vocab
        self.frame_seconds = frame_seconds
        self._columns: dict[str, LanguageColumns] = {}

    def __call__(self, language: str) -> LanguageColumns:
        cols = self._columns.get(language)
        if cols is None:
            cols = LanguageColumns.of(self.vocab, language, self.frame_seconds)
            self._columns[language] = cols
        return cols


def greedy_path_to_transcript(
    best: np.ndarray, best_logp: np.ndarray, columns: LanguageColumns
) -> Transcript:
    """Collapse one best path into text and words.

    best: [F] int, index into ``columns`` per frame (0 = blank); best_logp: [F] its
    log-probability. A word's probability is the geometric mean, over the frames where its
    characters are emitted, of the winning frame probability.
    """
    frames = len(best)
    frame_s = columns.frame_seconds
    words: list[Word] = []
    chars: list[str] = []
    start = end = -1
    logps: list[float] = []

    def flush() -> None:
        if chars:
            p = math.exp(sum(logps) / len(logps))
            words.append(Word("".join(chars), start * frame_s, end * frame_s, p))
            chars.clear()
            logps.clear()

    prev = -1
    for f in range(frames):
        k = int(best[f])
        if k == prev:
            if k != 0 and chars and columns.labels[k] != " ":
                end = f + 1  # a repeated frame extends the current character
            continue
        prev = k
        if k == 0:
            continue
        label = columns.labels[k]
        if label == " " or label.isspace():
            flush()
            continue
        if not chars:
            start = f
        chars.append(label)
        logps.append(float(best_logp[f]))
        end = f + 1
    flush()
    return Transcript(
        text=" ".join(w.word for w in words),
        language=columns.language,
        words=words,
        duration=frames * frame_s,
        logprob=float(best_logp.sum()) if frames else 0.0,
    )


def greedy_decode_batch(
    logits: Tensor,
    lengths: Tensor | Sequence[int],
    languages: Sequence[str],
    vocab: VocabularyLike | ColumnCache,
) -> list[Transcript]:
    """Greedy CTC decoding of a mixed-language batch.

    logits: [B, F, V] over the whole vocabulary; lengths: [B] valid frames; languages: B
    codes. Returns one ``Transcript`` per sample, in batch order.
    """
    lens = _check_batch(logits, lengths, languages)
    columns = vocab if isinstance(vocab, ColumnCache) else ColumnCache(vocab)
    out: list[Transcript | None] = [None] * len(lens)
    with torch.no_grad():
        for lang, rows in _group_by_language(languages).items():
            cols = columns(lang)
            logp = language_log_probs(logits[rows], cols)  # [b, F, Vl]
            best_logp, best = logp.max(dim=-1)  # [b, F]
            best_np = best.cpu().numpy()
            best_logp_np = best_logp.cpu().numpy()
            for j, i in enumerate(rows):
                n = lens[i]
                out[i] = greedy_path_to_transcript(best_np[j, :n], best_logp_np[j, :n], cols)
    return [t for t in out if t is not None]


def greedy_decode_one(
    logits: Tensor, language: str, vocab: VocabularyLike | ColumnCache, length: int | None = None
) -> Transcript:
    """Greedy decoding of one sample: logits ``[F, V]``, the first ``length`` frames."""
    n = logits.shape[0] if length is None else length
    return greedy_decode_batch(logits[None], [n], [language], vocab)[0]


@dataclass(frozen=True)
class BeamConfig:
    """pyctcdecode settings. ``alpha``/``beta``: LM weight and word insertion bonus
    (only used with an LM); ``token_min_logp``: characters below this log-probability are
    not expanded in a frame; ``beam_prune_logp``: beams this far below the best are cut."""

    beam_width: int = DEFAULT_BEAM_WIDTH
    alpha: float = 0.5
    beta: float = 1.0
    unk_score_offset: float = -10.0
    hotword_weight: float = 10.0
    beam_prune_logp: float = -10.0
    token_min_logp: float = -5.0
    # Wall-clock seconds one utterance's search may take; the search then runs in a child
    # process, killed when they pass. None: in the calling thread, without a limit.
    time_budget_s: float | None = 30.0


class BeamDecoder:
    """pyctcdecode beam search for one language, optionally with a KenLM model."""

    def __init__(
        self,
        columns: LanguageColumns,
        lm_path: Path | None = None,
        config: BeamConfig | None = None,
        unigrams: Sequence[str] | None = None,
    ) -> None:
        self.columns = columns
        self.lm_path = lm_path
        self.config = config or BeamConfig()
        self._decoder = build_decoder(
            columns.labels, lm_path, unigrams=unigrams, **_lm_weights(self.config)
        )

    def decode(
        self,
        log_probs: np.ndarray,
        hotwords: Sequence[str] | None = None,
        hotword_weight: float | None = None,
        beam_width: int | None = None,
    ) -> Transcript:
        """Decode ``log_probs [F, len(columns)]`` (this language's columns, log-softmaxed)
        in the calling thread, without a time limit."""
        frames = int(log_probs.shape[0])
        if frames == 0:
            return _empty(self.columns.language)
        kwargs = _search_kwargs(self.config, log_probs, hotwords, hotword_weight, beam_width)
        return _transcript(search(self._decoder, **kwargs), self.columns, frames)

    def close(self) -> None:
        """Release the LM (pyctcdecode keeps it in a class-level registry)."""
        self._decoder.cleanup()


def _lm_weights(config: BeamConfig) -> dict[str, float]:
    return {"alpha": config.alpha, "beta": config.beta, "unk_score_offset": config.unk_score_offset}


def _search_kwargs(
    config: BeamConfig,
    log_probs: np.ndarray,
    hotwords: Sequence[str] | None,
    hotword_weight: float | None,
    beam_width: int | None,
) -> dict[str, Any]:
    """Arguments of ``model.beam_search.search`` (without the decoder)."""
    return {
        "log_probs": np.ascontiguousarray(log_probs, dtype=np.float32),
        "beam_width": beam_width or config.beam_width,
        "beam_prune_logp": config.beam_prune_logp,
        "token_min_logp": config.token_min_logp,
        "hotwords": list(hotwords) if hotwords else None,
        "hotword_weight": hotword_weight if hotword_weight is not None else config.hotword_weight,
    }


def _empty(language: str) -> Transcript:
    return Transcript("", language, [], 0.0, 0.0, 0.0)


def _transcript(result: SearchResult, columns: LanguageColumns, frames: int) -> Transcript:
    frame_s = columns.frame_seconds
    words = [Word(w, s * frame_s, e * frame_s, None) for w, (s, e) in result.word_frames]
    return Transcript(
        text=result.text,
        language=columns.language,
        words=words,
        duration=frames * frame_s,
        logprob=result.acoustic,
        lm_score=result.combined,
    )


def _close_children(children: list[BeamProcess]) -> None:
    """End every child of the list and empty it."""
    while children:
        children.pop().close()


@dataclass
class BeamDecoders:
    """Beam decoders for every language of a vocabulary, built on first use and cached.

    lm_paths: language -> ARPA or KenLM binary file (languages without one decode
    without an LM). Safe to call from several threads. With ``config.time_budget_s`` each
    call borrows a child process (started on demand, one per concurrent caller, kept for
    the next call) holding its own copy of the decoders it was asked for; a child past its
    budget is killed and replaced by a fresh one on the next call.
    """

    vocab: VocabularyLike
    lm_paths: Mapping[str, Path] = field(default_factory=dict)
    config: BeamConfig = field(default_factory=BeamConfig)
    frame_seconds: float = FRAME_SECONDS

    def __post_init__(self) -> None:
        self.columns = ColumnCache(self.vocab, self.frame_seconds)
        self._decoders: dict[tuple[str, bool], BeamDecoder] = {}
        self._lock = threading.Lock()
        self._building: dict[tuple[str, bool], threading.Lock] = {}
        self._idle: list[BeamProcess] = []  # children waiting for a caller
        self._closed = False
        # Decoders dropped without close() (tests, scripts) still end their children.
        weakref.finalize(self, _close_children, self._idle)

    def get(self, language: str, use_lm: bool = True) -> BeamDecoder:
        """The decoder of ``language`` (with its LM when ``use_lm`` and one exists)."""
        lm = self.lm_paths.get(language) if use_lm else None
        key = (language, lm is not None)
        decoder = self._decoders.get(key)
        if decoder is not None:
            return decoder
        with self._lock:
            build_lock = self._building.setdefault(key, threading.Lock())
        # One builder per key; other languages are not blocked while an LM loads.
        with build_lock:
            decoder = self._decoders.get(key)
            if decoder is None:
                decoder = BeamDecoder(self.columns(language), lm, self.config)
                self._decoders[key] = decoder
        return decoder

    def decode(
        self,
        logits: Tensor,
        language: str,
        length: int | None = None,
        hotwords: Sequence[str] | None = None,
        use_lm: bool = True,
        beam_width: int | None = None,
        hotword_weight: float | None = None,
    ) -> Transcript:
        """Beam-search one sample: logits ``[F, V]``, the first ``length`` frames."""
        n = logits.shape[0] if length is None else length
        return self.decode_batch(
            logits[None], [n], [language], [hotwords], use_lm, beam_width, hotword_weight
        )[0]

    def has_lm(self, language: str) -> bool:
        return language in self.lm_paths

    def decode_batch(
        self,
        logits: Tensor,
        lengths: Tensor | Sequence[int],
        languages: Sequence[str],
        hotwords: Sequence[Sequence[str] | None] | None = None,
        use_lm: bool = True,
        beam_width: int | None = None,
        hotword_weight: float | None = None,
    ) -> list[Transcript]:
        """Beam-search a mixed-language batch.

        logits: [B, F, V]; lengths: [B] frames; languages: B codes; hotwords: per sample
        (normalised to the sample's alphabet; words that normalise to nothing are dropped).
        """
        lens = _check_batch(logits, lengths, languages)
        if hotwords is not None and len(hotwords) != len(lens):
            raise ValueError(f"{len(hotwords)} hotword lists for a batch of {len(lens)}")
        out: list[Transcript | None] = [None] * len(lens)
        budget = self.config.time_budget_s
        with torch.no_grad():
            for lang, rows in _group_by_language(languages).items():
                columns = self.columns(lang)
                logp = language_log_probs(logits[rows], columns).cpu().numpy()
                decoder = self.get(lang, use_lm) if budget is None else None
                for j, i in enumerate(rows):
                    words = self._normalize_hotwords(hotwords[i] if hotwords else None, lang)
                    one = logp[j, : lens[i]]
                    if decoder is not None:
                        out[i] = decoder.decode(one, words, hotword_weight, beam_width)
                    elif one.shape[0] == 0:
                        out[i] = _empty(lang)
                    else:
                        kwargs = _search_kwargs(self.config, one, words, hotword_weight, beam_width)
                        result = self._search_in_child(lang, use_lm, kwargs)
                        out[i] = _transcript(result, columns, one.shape[0])
        return [t for t in out if t is not None]

    def _search_in_child(self, language: str, use_lm: bool, kwargs: dict[str, Any]) -> SearchResult:
        """One search in a borrowed child process, within ``config.time_budget_s``."""
        lm = self.lm_paths.get(language) if use_lm else None
        key = f"{language}:{lm is not None}"
        if lm is not None and not Path(lm).is_file():
            raise FileNotFoundError(f"language model not found: {lm}")
        child = self._borrow()
        try:
            if key not in child.built:
                build = {
                    "labels": self.columns(language).labels,
                    "lm_path": lm,
                    **_lm_weights(self.config),
                }
                child.call("build", key, build, BUILD_TIMEOUT_S)
                child.built.add(key)
            result: SearchResult = child.call("search", key, kwargs, self.config.time_budget_s)
        finally:
            self._give_back(child)
        return result

    def _borrow(self) -> BeamProcess:
        with self._lock:
            if self._closed:
                raise BeamSearchError("the beam decoders are closed")
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
        return BeamProcess()

    def _give_back(self, child: BeamProcess) -> None:
        with self._lock:
            if child.alive and not self._closed:
                self._idle.append(child)
                return
        child.close()

    def _normalize_hotwords(self, words: Sequence[str] | None, language: str) -> list[str]:
        if not words:
            return []
        normalized = (self.vocab.normalize(w, language) for w in words)
        return [w for w in normalized if w.strip()]

    def close(self) -> None:
        """Release every cached decoder's LM and end the child processes."""
        with self._lock:
            for decoder in self._decoders.values():
                decoder.close()
            self._decoders.clear()
            self._closed = True
        _close_children(self._idle)
