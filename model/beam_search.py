"""pyctcdecode beam search, in this process or in a child process that can be killed.

Why a child process: pyctcdecode runs in Python and holds the GIL; its cost grows with
the beam width, the audio length and (without an LM, quadratically in the transcript's
length) the hotwords. A thread cannot be stopped, and one checking a clock between frames
can still spend seconds inside one frame (a wide beam scoring long hotword patterns). A
child process is killed when its wall-clock budget passes, and while it works the parent's
threads (the server's event loop among them) never wait for its GIL. docs/reliability.md
has the measurements.

This module imports no torch, so the child (``python -m model.beam_search``) starts in
about 0.3 s. Protocol: length-prefixed pickles over the child's stdin and stdout, one
request and one answer at a time; the child's own stdout is moved to stderr, so nothing a
library prints can corrupt an answer. The child ends at EOF on stdin (its parent closed
the pipe or died).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")
# Building a decoder reads an operator's LM file, not client input: a generous cap only
# so that a hung child cannot hang its caller for ever.
BUILD_TIMEOUT_S = 600.0
# The one default beam width: BeamConfig, the server's LASS_BEAM_WIDTH and the trainer's
# [evaluate] table all start from it, so a model is scored with the beam it is served with.
DEFAULT_BEAM_WIDTH = 16


class BeamSearchError(RuntimeError):
    """The beam search child failed (it crashed, or answered with an error)."""


class DecodeBudgetExceededError(RuntimeError):
    """Beam search ran past its wall-clock budget; its child process was killed."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(f"beam search ran past its budget of {budget_s:g} s and was stopped")
        self.budget_s = budget_s


@dataclass(frozen=True)
class SearchResult:
    """pyctcdecode's best beam: text, ``(word, (first frame, end frame))`` per word, the
    acoustic score and the score combined with the LM and hotwords."""

    text: str
    word_frames: list[tuple[str, tuple[int, int]]]
    acoustic: float
    combined: float


def sidecar_path(lm_path: Path) -> Path:
    """``<lm>.unigrams.txt``: the word list beside a binary LM (binary files cannot list
    their words, and beam search needs them). Whoever copies a binary LM copies it too."""
    return lm_path.with_name(lm_path.name + ".unigrams.txt")


def sidecar_unigrams(lm_path: Path) -> list[str] | None:
    """Words of a binary LM from ``<lm>.unigrams.txt`` (binary files cannot list them)."""
    side = sidecar_path(lm_path)
    if not side.is_file():
        return None
    return [w for w in side.read_text(encoding="utf-8").split("\n") if w]


def build_decoder(
    labels: Sequence[str],
    lm_path: Path | None,
    alpha: float,
    beta: float,
    unk_score_offset: float,
    unigrams: Sequence[str] | None = None,
) -> Any:
    """A pyctcdecode decoder over ``labels`` ("" = blank), with the KenLM at ``lm_path``."""
    from pyctcdecode import build_ctcdecoder

    if lm_path is not None and not Path(lm_path).is_file():
        raise FileNotFoundError(f"language model not found: {lm_path}")
    if lm_path is not None and unigrams is None and Path(lm_path).suffix != ".arpa":
        unigrams = sidecar_unigrams(Path(lm_path))
        if unigrams is None:
            log.warning(
                "%s has no %s.unigrams.txt beside it: every partial word will be scored "
                "as unknown, which hurts beam search",
                lm_path,
                Path(lm_path).name,
            )
    return build_ctcdecoder(
        list(labels),
        kenlm_model_path=str(lm_path) if lm_path is not None else None,
        unigrams=unigrams,
        alpha=alpha,
        beta=beta,
        unk_score_offset=unk_score_offset,
    )


# Longest stretch searched at once: 30 s of 20 ms frames. pyctcdecode copies and scans
# each beam's whole text every frame, so one search costs ~ length^2 (600 s of speech at
# beam 16 with an LM: 2.8 s; 1800 s: 43 s); pieces make it linear.
MAX_PIECE_FRAMES = 1500


def piece_bounds(log_probs: np.ndarray, max_frames: int = MAX_PIECE_FRAMES) -> list[int]:
    """Where to cut ``log_probs [F, V]`` (blank = column 0) into pieces of at most
    ``max_frames``: ``[0, c1, ..., F]``.

    Each cut goes to the middle of the longest run of blank-winning frames in the second
    half of the piece (a pause, so no word is split and the LM restarts between words);
    a piece without any such frame is cut at ``max_frames``. The pieces' texts are joined
    with a space: a pause that long is a word boundary in speech (models emit the space
    character there too).
    """
    total = int(log_probs.shape[0])
    blank = np.asarray(log_probs.argmax(axis=1) == 0)  # [F]
    cuts = [0]
    while total - cuts[-1] > max_frames:
        start = cuts[-1]
        lo, hi = start + max_frames // 2, start + max_frames
        window = blank[lo:hi].astype(np.int8)
        # runs of blanks in the window: starts where 0->1, ends where 1->0
        edges = np.diff(np.concatenate(([0], window, [0])))
        run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if run_starts.size:
            k = int(np.argmax(run_ends - run_starts))
            cuts.append(lo + int(run_starts[k] + run_ends[k]) // 2)
        else:
            cuts.append(hi)
    cuts.append(total)
    return cuts


def search(
    decoder: Any,
    log_probs: np.ndarray,
    beam_width: int,
    beam_prune_logp: float,
    token_min_logp: float,
    hotwords: Sequence[str] | None,
    hotword_weight: float,
    max_piece_frames: int = MAX_PIECE_FRAMES,
) -> SearchResult:
    """Beam-search ``log_probs [F, len(labels)]`` (F >= 1) with a built decoder, in pieces
    of at most ``max_piece_frames`` cut at pauses (``piece_bounds``); word frames are in
    the whole input's frames, scores the sums over the pieces."""
    texts: list[str] = []
    frames: list[tuple[str, tuple[int, int]]] = []
    acoustic = combined = 0.0
    bounds = piece_bounds(log_probs, max_piece_frames)
    for start, end in itertools.pairwise(bounds):
        beams = decoder.decode_beams(
            log_probs[start:end],
            beam_width=beam_width,
            beam_prune_logp=beam_prune_logp,
            token_min_logp=token_min_logp,
            hotwords=list(hotwords) if hotwords else None,
            hotword_weight=hotword_weight,
        )
        text, _state, word_frames, piece_acoustic, piece_combined = beams[0]
        if text:
            texts.append(str(text))
        frames += [(str(w), (int(s) + start, int(e) + start)) for w, (s, e) in word_frames]
        acoustic += float(piece_acoustic)
        combined += float(piece_combined)
    return SearchResult(" ".join(texts), frames, acoustic, combined)


# ---------------------------------------------------------------------------- the child


def _write_frame(fd: int, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int, deadline: float) -> bytes | None:
    """``n`` bytes from ``fd``; None at EOF; TimeoutError once ``deadline`` (monotonic)
    passes (``math.inf``: wait as long as it takes)."""
    parts: list[bytes] = []
    while n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], None if math.isinf(left) else left)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_frame(fd: int, deadline: float = math.inf) -> Any:
    """One pickled object; EOFError when the other side closed its end first."""
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    body = _read_exact(fd, size, deadline)
    if body is None:
        raise EOFError
    return pickle.loads(body)


def _serve(requests: int, answers: int) -> None:
    """The child's loop: ``("build", key, kwargs)`` and ``("search", key, kwargs)``."""
    decoders: dict[str, Any] = {}
    while True:
        try:
            kind, key, kwargs = _read_frame(requests)
        except EOFError:
            return
        try:
            if kind == "build":
                decoders[key] = build_decoder(**kwargs)
                answer: tuple[Any, ...] = ("ok", None)
            elif kind == "search":
                answer = ("ok", search(decoders[key], **kwargs))
            else:
                answer = ("error", f"unknown request {kind!r}")
        except Exception as exc:  # answered to the parent, which raises it there
            answer = ("error", f"{type(exc).__name__}: {exc}")
        _write_frame(answers, answer)


def main() -> None:
    """Entry point of ``python -m model.beam_search`` (started by :class:`BeamProcess`)."""
    answers = os.dup(1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into an answer
    sys.stdout = sys.stderr
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    _serve(0, answers)


# ---------------------------------------------------------------------------- the parent


class BeamProcess:
    """One child process running beam searches, one at a time (callers hold it
    exclusively). ``built`` lists the decoder keys the child has."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model.beam_search"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests = self.process.stdin.fileno()
        self._answers = self.process.stdout.fileno()
        self.built: set[str] = set()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, kind: str, key: str, kwargs: dict[str, Any], budget_s: float | None) -> Any:
        """Send one request and wait for its answer at most ``budget_s`` seconds (None: no
        budget). Past it the child is killed: DecodeBudgetExceededError."""
        deadline = math.inf if budget_s is None else time.monotonic() + budget_s
        try:
            _write_frame(self._requests, (kind, key, kwargs))
            status, value = _read_frame(self._answers, deadline)
        except TimeoutError:
            self.kill()
            assert budget_s is not None
            raise DecodeBudgetExceededError(budget_s) from None
        except (EOFError, BrokenPipeError) as exc:
            self.kill()
            raise BeamSearchError(
                f"the beam search process exited (code {self.process.returncode})"
            ) from exc
        if status != "ok":
            raise BeamSearchError(str(value))
        return value

    def kill(self) -> None:
        """Stop the child now (SIGKILL: a beam search never reaches a signal handler)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._close_pipes()

    def close(self) -> None:
        """Let the child finish (EOF on its stdin), killing it if it does not within 5 s."""
        self._close_pipes()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


if __name__ == "__main__":
    # Run the importable module's copy, so the results it pickles name
    # model.beam_search.SearchResult, which the parent can load, not __main__.SearchResult.
    from model import beam_search

    beam_search.main()
