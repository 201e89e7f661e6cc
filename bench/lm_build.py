"""LM build benchmark: our pure-Python estimator vs KenLM's lmplz, ARPA vs quantised binary.

The text is bench.decoding's: Debian's fortunes-de in sentences, normalised with
``Vocabulary.normalize``, the same 32 held-out sentences left out (about 0.4 M words). For
each LM (trigram, unpruned and with singletons pruned from order 2; the pruned bigram of
configs/default.toml) it times both estimators, compares their ARPA files n-gram by
n-gram and by held-out sentence scores, then converts lmplz's ARPA with ``build_binary``
(probing, and the 8-bit quantised trie that ``build_lm(binary=True)`` writes) and scores
the held-out sentences with each.
Needs ``lmplz`` and ``build_binary`` (``scripts/build-kenlm.sh``).
Run: ``.venv/bin/python -m bench.lm_build``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import kenlm

from bench.decoding import german_sentences
from model.train.lm import (
    BOS,
    EOS,
    UNK,
    Estimator,
    build_lm,
    find_build_binary,
    find_lmplz,
    read_arpa,
    read_arpa_counts,
    read_arpa_unigrams,
    to_binary,
)
from model.vocab import Vocabulary

HELD_OUT = 32


def compare_arpa(ours: Path, theirs: Path) -> dict[str, object]:
    """Largest differences between two ARPA files over the n-grams both hold (``<s>``'s
    probability left out: we write -99, lmplz 0; it is never predicted)."""
    pa, ba = read_arpa(ours)
    pb, bb = read_arpa(theirs)
    shared = [g for g in pa if g in pb and g != BOS]
    return {
        "same_ngrams": set(pa) == set(pb),
        "max_abs_log10_prob_diff": max(abs(pa[g] - pb[g]) for g in shared),
        "max_abs_log10_backoff_diff": max(
            abs(ba.get(g, 0.0) - bb.get(g, 0.0)) for g in set(ba) | set(bb)
        ),
    }


def per_word_diff(a: kenlm.Model, b: kenlm.Model, sentences: list[str]) -> float:
    """Largest |difference| of two models' held-out sentence log10 scores, per word."""
    return max(abs(a.score(s) - b.score(s)) / (len(s.split()) + 1) for s in sentences)


def timed_build(
    train: list[str], out: Path, order: int, prune: int, estimator: Estimator
) -> tuple[Path, float]:
    t0 = time.perf_counter()
    path = build_lm(train, out, order=order, prune_singletons_from=prune, estimator=estimator)
    return path, time.perf_counter() - t0


def main() -> None:
    if find_lmplz() is None or find_build_binary() is None:
        raise SystemExit("lmplz and build_binary are needed: bash scripts/build-kenlm.sh")
    rng = random.Random(0)
    raw = german_sentences()
    rng.shuffle(raw)
    vocab = Vocabulary.build({"de": raw})
    sentences = [s for s in (vocab.normalize(r, "de") for r in raw) if s]
    test, train = sentences[:HELD_OUT], sentences[HELD_OUT:]
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": os.getloadavg()[0],
        "lm_sentences": len(train),
        "lm_words": sum(len(s.split()) for s in train),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # prune_singletons_from past the order prunes nothing (valid in every LMConfig)
        for name, order, prune in (
            ("order3", 3, 4),
            ("order3_pruned2", 3, 2),
            ("order2_pruned2", 2, 2),  # configs/default.toml's [lm]
        ):
            ours, ours_s = timed_build(train, folder / f"{name}_python", order, prune, "python")
            theirs, theirs_s = timed_build(train, folder / f"{name}_lmplz", order, prune, "lmplz")
            row: dict[str, object] = {
                "ngrams": read_arpa_counts(theirs)[0],
                "python_build_s": round(ours_s, 2),
                "lmplz_build_s": round(theirs_s, 2),
                "python_arpa_mb": round(ours.stat().st_size / 1e6, 2),
                "lmplz_arpa_mb": round(theirs.stat().st_size / 1e6, 2),
                **compare_arpa(ours, theirs),
                "max_held_out_log10_per_word_diff": per_word_diff(
                    kenlm.Model(str(ours)), kenlm.Model(str(theirs)), test
                ),
            }
            tool = find_build_binary()
            assert tool is not None
            arpa_model = kenlm.Model(str(theirs))
            for kind, quantised in (("probing", False), ("trie_q8", True)):
                t0 = time.perf_counter()
                binary = to_binary(theirs, folder / f"{name}.{kind}.bin", tool, quantised)
                row[f"{kind}_build_s"] = round(time.perf_counter() - t0, 2)
                row[f"{kind}_mb"] = round(binary.stat().st_size / 1e6, 2)
                row[f"{kind}_max_held_out_log10_per_word_diff"] = per_word_diff(
                    kenlm.Model(str(binary)), arpa_model, test
                )
            words = [w for w in read_arpa_unigrams(theirs) if w not in (BOS, EOS, UNK)]
            row["unigrams_txt_mb"] = round(len("\n".join(words).encode()) / 1e6, 2)
            out[name] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
