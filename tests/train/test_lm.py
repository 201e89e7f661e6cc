"""The n-gram LM builder: hand-checked Kneser-Ney values, normalisation, ARPA validity.

Our estimator is pinned (``estimator="python"``) where a test checks its numbers;
tests/train/test_kenlm.py compares lmplz with it."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import kenlm
import pytest
import torch

from model.decoding import greedy_decode_one
from model.train.lm import (
    FALLBACK_DISCOUNTS,
    LMConfig,
    LMError,
    NGram,
    _discounts,
    build_lm,
    estimate,
    read_arpa_counts,
)
from model.vocab import Vocabulary

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog played",
    "the cat ate the fish",
    "my dog likes the cat",
    "the mat is red",
    "on the log sat a frog",
    "the fish swam away",
    "a red frog sat on a mat",
    "the dog ate my fish",
]


def conditional(model: kenlm.Model, context: list[str], word: str) -> float:
    """p(word | <s> context) from kenlm (linear scale)."""
    state = kenlm.State()
    model.BeginSentenceWrite(state)
    for w in context:
        out = kenlm.State()
        model.BaseScore(state, w, out)
        state = out
    return 10.0 ** model.BaseScore(state, word, kenlm.State())


def vocabulary(lines: list[str]) -> list[str]:
    return [*sorted({w for line in lines for w in line.split()}), "</s>", "<unk>"]


def test_hand_computed_kneser_ney(tmp_path: Path) -> None:
    # Bigram model on "a b", "a c"; every count-of-count table is too small, so both
    # orders use the fallback discounts (0.5, 1, 1.5). By hand :
    # unigram continuation counts a=1 b=1 c=1 </s>=2, gamma=0.5, |V|=5 -> p(a)=0.2,
    # p(</s>)=0.3, p(<unk>)=0.1; p(b|a) = 0.5/2 + 0.5*0.2 = 0.35; p(a|<s>) = 0.5 + 0.5*0.2;
    # context b has one follower: gamma = 0.5, p(</s>|b) = 0.5 + 0.5*0.3, p(<unk>|b) = 0.5*0.1.
    path = build_lm(["a b", "a c"], tmp_path / "tiny", order=2, estimator="python")
    model = kenlm.Model(str(path))
    assert conditional(model, ["a"], "b") == pytest.approx(0.35, abs=1e-6)
    assert conditional(model, [], "a") == pytest.approx(0.6, abs=1e-6)
    assert conditional(model, ["b"], "</s>") == pytest.approx(0.5 + 0.5 * 0.3, abs=1e-6)
    assert conditional(model, ["b"], "zzz") == pytest.approx(0.5 * 0.1, abs=1e-6)
    est = estimate(["a b", "a c"], LMConfig(order=2))
    assert est.fallback_orders == [1, 2] and est.discounts[0] == (0.5, 1.0, 1.5)


def test_discounts_use_counts_of_exactly_k() -> None:
    # Chen & Goodman's t_k counts n-grams of adjusted count exactly k: with t = 6, 3, 2, 1
    # (and five n-grams seen 9 times, which are no t_4), Y = 0.5 and D = 0.5, 1, 2.
    counts = [1] * 6 + [2] * 3 + [3] * 2 + [4] + [9] * 5
    adjusted: dict[NGram, int] = {(f"w{i}",): c for i, c in enumerate(counts)}
    assert _discounts(adjusted) == (pytest.approx((0.5, 1.0, 2.0)), False)
    # No n-gram of count exactly 4 gives D3+ = 3, as in lmplz: not a fallback.
    without_4 = {g: c for g, c in adjusted.items() if c != 4}
    assert _discounts(without_4) == (pytest.approx((0.5, 1.0, 3.0)), False)
    without_3 = {g: c for g, c in adjusted.items() if c != 3}
    assert _discounts(without_3) == (FALLBACK_DISCOUNTS, True)


@pytest.mark.parametrize("prune", [0, 2, 3])
def test_distributions_sum_to_one(tmp_path: Path, prune: int) -> None:
    path = build_lm(
        CORPUS, tmp_path / "en", order=3, prune_singletons_from=prune, estimator="python"
    )
    assert path.suffix == ".arpa"
    declared, found = read_arpa_counts(path)
    assert declared == found and len(declared) == 3
    model = kenlm.Model(str(path))
    assert model.order == 3
    words = vocabulary(CORPUS)
    for context in [[], ["the"], ["the", "cat"], ["sat", "on"], ["cat", "the"], ["zzz"], ["a"]]:
        total = sum(conditional(model, context, w) for w in words)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_pruning_keeps_files_small_and_consistent(tmp_path: Path) -> None:
    full = build_lm(CORPUS, tmp_path / "full", order=3, estimator="python")
    pruned = build_lm(
        CORPUS, tmp_path / "pruned", order=3, prune_singletons_from=2, estimator="python"
    )
    full_counts, _ = read_arpa_counts(full)
    pruned_counts, _ = read_arpa_counts(pruned)
    assert pruned_counts[0] == full_counts[0]  # unigrams are never pruned
    assert pruned_counts[1] < full_counts[1] and pruned_counts[2] < full_counts[2]
    assert pruned.stat().st_size < full.stat().st_size
    # "sat on the" occurs three times: kept with its prefix and suffix.
    text = pruned.read_text()
    assert "\tsat on the" in text and "\tsat on\t" in text and "\ton the\t" in text


def test_training_sentence_beats_shuffled(tmp_path: Path) -> None:
    model = kenlm.Model(str(build_lm(CORPUS, tmp_path / "en", binary=False)))
    rng = random.Random(0)
    for sentence in CORPUS[:5]:
        words = sentence.split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        assert model.score(sentence) > model.score(" ".join(shuffled)) + 1.0


@pytest.mark.parametrize("order", [2, 4, 6])
def test_order_is_configurable(tmp_path: Path, order: int) -> None:
    path = build_lm(CORPUS, tmp_path / f"o{order}", order=order, binary=False)
    declared, found = read_arpa_counts(path)
    assert len(declared) == order and declared == found
    assert kenlm.Model(str(path)).order == order


def test_text_file_input_and_normalisation(tmp_path: Path) -> None:
    src = tmp_path / "text.txt"
    src.write_text("The Cat, sat!\n\n  on THE mat.\n“Don't” — stop_here\n", encoding="utf-8")
    path = build_lm(src, tmp_path / "lm", order=2, binary=False)
    unigrams = {
        line.split("\t")[1]
        for line in path.read_text().splitlines()
        if line.count("\t") >= 1 and " " not in line.split("\t")[1]
    }
    assert {"the", "cat", "sat", "on", "mat", "don't", "stop", "here"} <= unigrams
    assert not any(ch in "".join(unigrams) for ch in ",.!“”—_")
    custom = build_lm(["ABC def"], tmp_path / "c", order=2, binary=False, normalize=lambda s: s)
    assert "\tABC" in custom.read_text()


def test_bad_input_is_reported(tmp_path: Path) -> None:
    with pytest.raises(LMError, match="no words"):
        build_lm(["", "  ", "!!"], tmp_path / "x")
    with pytest.raises(LMError, match="not found"):
        build_lm(tmp_path / "missing.txt", tmp_path / "x")
    # LMConfig is the trainer's [lm] table: 0 is "no pruning" there and here
    for order in (1, 7):
        with pytest.raises(ValueError, match="order"):
            LMConfig(order=order)
    with pytest.raises(ValueError, match="prune"):
        LMConfig(prune_singletons_from=1)
    assert LMConfig().prune_singletons_from == 0


# Letters with combining marks (Unicode M*) that NFC cannot fold into one code point:
# Russian stress marks (U+0301); Devanagari vowel signs, virama, nukta and candrabindu;
# Lithuanian e with dot above and tilde. French decomposed e + U+0301 composes to one letter.
MARKED = {
    "ru": ["Он сказа\u0301л пра\u0301вду.", "Пра\u0301вда дороже зо\u0301лота!"],
    "hi": ["हिन्दी बोलो।", "मैं किताब पढ़ता हूँ"],
    "lt": ["Ė\u0303 ir ė\u0303 vėl", "ne ta\u0303 pati"],
    "fr": ["Le cafe\u0301 du the\u0301a\u0302tre", "l'e\u0301te\u0301"],
}


def _greedy_words(vocab: Vocabulary, text: str, language: str) -> list[str]:
    """The words the CTC decoder emits for logits that spell ``text`` (one frame per
    character, a blank between)."""
    ids = vocab.encode(text, language)
    logits = torch.full((2 * len(ids) + 1, len(vocab)), -10.0)
    logits[:, 0] = 0.0
    for i, token in enumerate(ids):
        logits[2 * i + 1, token] = 10.0
    return [w.word for w in greedy_decode_one(logits, language, vocab).words]


@pytest.mark.parametrize("language", sorted(MARKED))
def test_lm_words_are_the_decoders_words_in_scripts_with_combining_marks(
    tmp_path: Path, language: str
) -> None:
    lines = MARKED[language]
    vocab = Vocabulary.build({language: lines})
    # The trainer's LM path: lm_text normalises to the alphabet, build_lm splits into words.
    text = [vocab.normalize(line, language) for line in lines]
    path = build_lm(text, tmp_path / language, order=2, binary=False)
    lm_words = {
        fields[1]
        for fields in (line.split("\t") for line in path.read_text(encoding="utf-8").splitlines())
        if len(fields) > 1 and " " not in fields[1]
    } - {"<s>", "</s>", "<unk>"}
    decoded = [_greedy_words(vocab, line, language) for line in text]
    assert lm_words == {w for words in decoded for w in words}, language
    # The sentences the LM counted are the decoder's word sequences.
    assert [line.split(" ") for line in text] == decoded
    if language != "fr":  # French composes to single letters; the others keep their marks
        assert any(unicodedata.category(ch).startswith("M") for ch in "".join(lm_words))
