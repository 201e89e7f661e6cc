"""Greedy and beam CTC decoding on hand-made logits (no model needed)."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from model.beam_search import MAX_PIECE_FRAMES, piece_bounds
from model.decoding import (
    FRAME_SECONDS,
    BeamConfig,
    BeamDecoders,
    DecodeBudgetExceededError,
    LanguageColumns,
    Transcript,
    Word,
    greedy_decode_batch,
    greedy_decode_one,
)
from model.train.lm import build_lm, find_build_binary
from model.vocab import Vocabulary

EN_TEXT = ["the cat sat on the mat", "a dog"]
DE_TEXT = ["der hund ist groß", "schön"]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build({"en": EN_TEXT, "de": DE_TEXT})


def frames_to_logits(
    vocab: Vocabulary, frames: list[dict[str, float]], floor: float = 1e-4
) -> torch.Tensor:
    """One sample's logits [F, V] from per-frame {token: probability} ("" = blank)."""
    index = {t: i for i, t in enumerate(vocab.tokens)}
    probs = torch.full((len(frames), len(vocab.tokens)), floor)
    for f, dist in enumerate(frames):
        for token, p in dist.items():
            probs[f, 0 if token == "" else index[token]] = p
    return probs.log()


def spell(text: str, hold: int = 2, gap: int = 1) -> list[dict[str, float]]:
    """Frames that say ``text`` clearly: each character ``hold`` frames, then blanks."""
    frames: list[dict[str, float]] = [{"": 0.99}] * gap
    for ch in text:
        frames += [{ch: 0.99}] * hold + [{"": 0.99}] * gap
    return frames


def ambiguous_word(
    prefix: str, options: dict[str, float], suffix: str = ""
) -> list[dict[str, float]]:
    """Frames for ``prefix`` + one character drawn from ``options`` + ``suffix``."""
    return spell(prefix)[:-1] + [options, options, {"": 0.99}] + spell(suffix)[1:]


def batch(
    vocab: Vocabulary, samples: list[list[dict[str, float]]]
) -> tuple[torch.Tensor, list[int]]:
    """Pad several samples' frames into logits [B, F, V] with random junk after the end."""
    rows = [frames_to_logits(vocab, s) for s in samples]
    width = max(r.shape[0] for r in rows) + 5
    out = torch.randn(
        len(rows), width, len(vocab.tokens), generator=torch.Generator().manual_seed(0)
    )
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out, [r.shape[0] for r in rows]


def test_language_columns_put_blank_first(vocab: Vocabulary) -> None:
    cols = LanguageColumns.of(vocab, "de")
    assert cols.ids[0] == 0 and cols.labels[0] == ""
    assert " " in cols.labels and "ß" in cols.labels and "c" in cols.labels
    assert "ß" not in LanguageColumns.of(vocab, "en").labels


def test_greedy_text_and_word_times(vocab: Vocabulary) -> None:
    frames = spell("the") + [{" ": 0.99}] * 3 + spell("cat")
    logits, lengths = batch(vocab, [frames])
    (t,) = greedy_decode_batch(logits, lengths, ["en"], vocab)
    assert t.text == "the cat"
    assert [w.word for w in t.words] == ["the", "cat"]
    # "the": first char at frame 1, last char (2 frames) ends at frame 1 + 3*3 - 1 = 9.
    assert t.words[0].start == pytest.approx(1 * FRAME_SECONDS)
    assert t.words[0].end == pytest.approx(9 * FRAME_SECONDS)
    cat_start = len(spell("the")) + 3 + 1
    assert t.words[1].start == pytest.approx(cat_start * FRAME_SECONDS)
    assert t.duration == pytest.approx(len(frames) * FRAME_SECONDS)
    assert all(w.probability is not None and 0.9 < w.probability <= 1.0 for w in t.words)


def test_greedy_keeps_doubled_letters_split_by_blank(vocab: Vocabulary) -> None:
    frames = [{"": 0.99}, {"a": 0.99}, {"a": 0.99}, {"": 0.99}, {"a": 0.99}, {"": 0.99}]
    logits, lengths = batch(vocab, [frames])
    assert greedy_decode_batch(logits, lengths, ["en"], vocab)[0].text == "aa"


def test_greedy_restricts_to_the_language_alphabet(vocab: Vocabulary) -> None:
    # "ß" wins the frame over the whole vocabulary, but English has no "ß".
    frames = spell("gro") + [{"ß": 0.6, "s": 0.3}] * 2 + [{"": 0.99}]
    logits, lengths = batch(vocab, [frames, frames])
    en, de = greedy_decode_batch(logits, lengths, ["en", "de"], vocab)
    assert de.text.endswith("ß")
    assert "ß" not in en.text and en.language == "en"


def test_mixed_batch_equals_samples_alone(vocab: Vocabulary) -> None:
    a, b = spell("the dog"), spell("der hund") + spell(" ist")
    logits, lengths = batch(vocab, [a, b])
    together = greedy_decode_batch(logits, torch.tensor(lengths), ["en", "de"], vocab)
    alone_a = greedy_decode_batch(logits[:1, : lengths[0]], [lengths[0]], ["en"], vocab)[0]
    alone_b = greedy_decode_batch(logits[1:, : lengths[1]], [lengths[1]], ["de"], vocab)[0]
    assert together[0] == alone_a and together[1] == alone_b
    assert together[0].text == "the dog" and together[1].text == "der hund ist"


def test_empty_and_bad_batches(vocab: Vocabulary) -> None:
    logits, _ = batch(vocab, [spell("a")])
    (t,) = greedy_decode_batch(logits, [0], ["en"], vocab)
    assert t.text == "" and t.words == []
    with pytest.raises(ValueError, match="languages"):
        greedy_decode_batch(logits, [1], ["en", "de"], vocab)
    with pytest.raises(ValueError, match="outside"):
        greedy_decode_batch(logits, [logits.shape[1] + 1], ["en"], vocab)
    with pytest.raises(ValueError, match=r"\[B, F, V\]"):
        greedy_decode_batch(logits[0], [1], ["en"], vocab)
    assert BeamDecoders(vocab).decode_batch(logits, [0], ["en"])[0].text == ""


def test_beam_without_lm_agrees_with_greedy_on_clear_logits(vocab: Vocabulary) -> None:
    logits, lengths = batch(vocab, [spell("the cat sat"), spell("der hund")])
    greedy = greedy_decode_batch(logits, lengths, ["en", "de"], vocab)
    beam = BeamDecoders(vocab).decode_batch(logits, lengths, ["en", "de"])
    for g, b in zip(greedy, beam, strict=True):
        assert b.text == g.text
        assert [(w.word, w.start, w.end) for w in b.words] == [
            (w.word, w.start, w.end) for w in g.words
        ]
        assert b.logprob is not None and b.logprob < 0


LM_TEXT = ["the cat sat on the mat", "the cat ate", "a cat sat", "the dog sat on the mat"] * 3


@pytest.fixture(scope="module")
def en_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lm(LM_TEXT, tmp_path_factory.mktemp("lm") / "en", order=3, binary=False)


@pytest.fixture(scope="module", params=["arpa", "binary"])
def any_lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "binary" and find_build_binary() is None:
        pytest.skip("KenLM's build_binary is not installed: LMs stay ARPA")
    binary = request.param == "binary"
    path = build_lm(LM_TEXT, tmp_path_factory.mktemp("lm") / "en", order=3, binary=binary)
    assert path.suffix == (".bin" if request.param == "binary" else ".arpa")
    return path


def test_beam_with_lm_fixes_a_greedy_error(vocab: Vocabulary, any_lm: Path) -> None:
    # Acoustically "cad" (0.55) edges out "cat" (0.45); the LM knows only "cat".
    frames = spell("the ") + ambiguous_word("ca", {"d": 0.55, "t": 0.44}, " sat")
    logits, lengths = batch(vocab, [frames])
    greedy = greedy_decode_batch(logits, lengths, ["en"], vocab)[0]
    decoders = BeamDecoders(vocab, {"en": any_lm}, BeamConfig(beam_width=16))
    no_lm = decoders.decode_batch(logits, lengths, ["en"], use_lm=False)[0]
    with_lm = decoders.decode_batch(logits, lengths, ["en"])[0]
    assert greedy.text == "the cad sat"
    assert no_lm.text == "the cad sat"
    assert with_lm.text == "the cat sat"
    assert [w.word for w in with_lm.words] == ["the", "cat", "sat"]
    assert with_lm.words[1].start == pytest.approx(greedy.words[1].start)


def test_hotwords_change_ambiguous_output(vocab: Vocabulary) -> None:
    frames = ambiguous_word("ma", {"t": 0.55, "d": 0.44})
    logits, lengths = batch(vocab, [frames, frames])
    decoders = BeamDecoders(vocab)
    plain, boosted = decoders.decode_batch(logits, lengths, ["en", "en"], hotwords=[None, ["MAD!"]])
    assert plain.text == "mat"
    assert boosted.text == "mad"  # normalised to the alphabet: "MAD!" -> "mad"
    weak = decoders.decode_batch(
        logits, lengths, ["en", "en"], hotwords=[None, ["mad"]], hotword_weight=0.01
    )
    assert weak[1].text == "mat"


def test_beam_decoders_are_cached_and_thread_safe(vocab: Vocabulary, en_lm: Path) -> None:
    decoders = BeamDecoders(vocab, {"en": en_lm})
    frames = spell("the ") + ambiguous_word("ca", {"d": 0.55, "t": 0.44}, " sat")
    logits, lengths = batch(vocab, [frames, spell("der hund")])
    expected = decoders.decode_batch(logits, lengths, ["en", "de"])
    results: list[list[Transcript]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(decoders.decode_batch(logits, lengths, ["en", "de"]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 12 and all(r == expected for r in results)
    assert decoders.get("en") is decoders.get("en")
    assert decoders.get("en") is not decoders.get("en", use_lm=False)
    assert decoders.get("de") is decoders.get("de", use_lm=False)  # de has no LM
    decoders.close()


def test_missing_lm_file_names_the_path(vocab: Vocabulary, tmp_path: Path) -> None:
    decoders = BeamDecoders(vocab, {"en": tmp_path / "nope.arpa"})
    with pytest.raises(FileNotFoundError, match="nope.arpa"):
        decoders.get("en")


def test_transcript_segments_and_shift() -> None:
    words = [Word("a", 0.0, 0.2, 0.9), Word("b", 0.3, 0.5, 0.8), Word("c", 2.0, 2.4, 0.5)]
    t = Transcript("a b c", "en", words, 3.0, -1.0)
    segs = t.segments(max_gap=0.6)
    assert [s.text for s in segs] == ["a b", "c"]
    assert segs[0].start == 0.0 and segs[0].end == 0.5
    assert segs[0].avg_logprob == pytest.approx((math.log(0.9) + math.log(0.8)) / 2)
    assert [s.text for s in t.segments(max_words=1)] == ["a", "b", "c"]
    moved = t.shifted(10.0)
    assert moved.words[2].start == pytest.approx(12.0) and t.words[2].start == 2.0
    assert moved.to_dict()["words"][0] == {
        "word": "a",
        "start": 10.0,
        "end": 10.2,
        "probability": 0.9,
    }
    beam_like = Transcript("a", "en", [Word("a", 0.0, 0.1)], 1.0)
    assert beam_like.segments()[0].avg_logprob is None


def test_single_sample_helpers_match_the_batch(vocab: Vocabulary) -> None:
    logits, lengths = batch(vocab, [spell("the dog"), spell("der hund")])
    batched = greedy_decode_batch(logits, lengths, ["en", "de"], vocab)
    assert greedy_decode_one(logits[1], "de", vocab, lengths[1]) == batched[1]
    decoders = BeamDecoders(vocab)
    beam = decoders.decode_batch(logits, lengths, ["en", "de"], hotwords=[["dig"], None])
    assert decoders.decode(logits[0], "en", lengths[0], hotwords=["dig"]) == beam[0]


def reference_greedy_decode(
    logits: torch.Tensor, length: int, allowed: Sequence[int]
) -> tuple[list[int], list[int]]:
    """The CTC best path over the ``allowed`` columns of one sample's logits ``[F, V]``
    (first ``length`` frames), written the plain way as an oracle for the decoder: the
    token ids after collapsing repeats and dropping blanks (id 0), and the frame each
    emitted token starts at."""
    if 0 not in allowed:
        raise ValueError("allowed columns must include the CTC blank (0)")
    columns = torch.as_tensor(list(allowed), dtype=torch.long)
    best = columns[logits[:length].index_select(1, columns).argmax(dim=1)].tolist()
    tokens: list[int] = []
    starts: list[int] = []
    previous = 0
    for frame, token in enumerate(best):
        if token not in (previous, 0):
            tokens.append(token)
            starts.append(frame)
        previous = token
    return tokens, starts


def test_reference_greedy_decode_collapses_and_restricts_columns() -> None:
    # frames: a a _ b b c(forbidden, best) a
    v = 5
    best = [1, 1, 0, 2, 2, 4, 1]
    logits = torch.full((len(best) + 2, v), -5.0)
    for f, t in enumerate(best):
        logits[f, t] = 5.0
    logits[5, 3] = 1.0  # second best at frame 5 is token 3
    tokens, starts = reference_greedy_decode(logits, len(best), allowed=[0, 1, 2, 3])
    assert tokens == [1, 2, 3, 1]
    assert starts == [0, 3, 5, 6]
    tokens_all, _ = reference_greedy_decode(logits, len(best), allowed=range(v))
    assert tokens_all == [1, 2, 4, 1]
    with pytest.raises(ValueError, match="blank"):
        reference_greedy_decode(logits, 3, allowed=[1, 2])


def test_greedy_matches_the_reference_best_path(vocab: Vocabulary) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, len(vocab.tokens), generator=gen) * 3
    lengths = [40, 25, 7]
    langs = ["en", "de", "en"]
    ours = greedy_decode_batch(logits, lengths, langs, vocab)
    for i, t in enumerate(ours):
        allowed = vocab.language_token_ids(langs[i])
        ids, starts = reference_greedy_decode(logits[i], lengths[i], allowed)
        assert t.text == " ".join(vocab.decode(ids).split())
        # Each word starts at the frame where its first character starts.
        word_starts = [
            s
            for k, s in enumerate(starts)
            if vocab.tokens[ids[k]] != " " and (k == 0 or vocab.tokens[ids[k - 1]] == " ")
        ]
        assert [round(w.start / FRAME_SECONDS) for w in t.words] == word_starts


def test_hotwords_work_with_an_lm_for_words_it_never_saw(vocab: Vocabulary, en_lm: Path) -> None:
    frames = spell("the ") + ambiguous_word("ca", {"d": 0.55, "t": 0.44}, " sat")
    logits, lengths = batch(vocab, [frames])
    decoders = BeamDecoders(vocab, {"en": en_lm})
    assert decoders.decode(logits[0], "en", lengths[0]).text == "the cat sat"
    # "cad" is out of the LM's vocabulary; the hotword bonus outweighs the unknown-word cost.
    boosted = decoders.decode(logits[0], "en", lengths[0], hotwords=["cad"], hotword_weight=20.0)
    assert boosted.text == "the cad sat"


def test_beam_search_in_a_child_matches_the_calling_thread(vocab: Vocabulary, en_lm: Path) -> None:
    frames = spell("the ") + ambiguous_word("ca", {"d": 0.55, "t": 0.44}, " sat")
    logits, lengths = batch(vocab, [frames, spell("der hund"), []])
    langs, words = ["en", "de", "en"], [["cad"], None, None]
    local = BeamDecoders(vocab, {"en": en_lm}, BeamConfig(time_budget_s=None))
    child = BeamDecoders(vocab, {"en": en_lm}, BeamConfig(time_budget_s=10.0))
    assert child.decode_batch(logits, lengths, langs, words) == local.decode_batch(
        logits, lengths, langs, words
    )
    child.close()


def test_beam_search_past_its_budget_is_stopped(vocab: Vocabulary) -> None:
    # Random logits, a wide beam and many hotwords without an LM: minutes of work in
    # pyctcdecode, which holds the GIL. The child running it is killed at the budget.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3000, len(vocab.tokens), generator=gen)
    hotwords = [[f"catsat{i}" for i in range(100)]]
    decoders = BeamDecoders(vocab, config=BeamConfig(time_budget_s=0.5))
    decoders.decode_batch(logits[:, :10], [10], ["en"])  # the child is up and built
    start = time.monotonic()
    with pytest.raises(DecodeBudgetExceededError, match="0.5 s"):
        decoders.decode_batch(logits, [3000], ["en"], hotwords, beam_width=256)
    assert time.monotonic() - start < 1.5
    # The next call gets a fresh child and works.
    clear = batch(vocab, [spell("the cat")])
    assert decoders.decode_batch(*clear, ["en"])[0].text == "the cat"
    decoders.close()


def test_long_beam_search_runs_in_pieces_cut_at_pauses(vocab: Vocabulary) -> None:
    # 3 x 700 frames of "the cat sat ", each followed by a pause: over MAX_PIECE_FRAMES,
    # so the search runs in pieces; every cut falls in a pause and the words keep their times.
    unit = spell("the cat sat ")
    unit += [{"": 0.99}] * (700 - len(unit))
    logits, lengths = batch(vocab, [unit * 3])
    columns = LanguageColumns.of(vocab, "en")
    logp = torch.log_softmax(logits[0, : lengths[0], list(columns.ids)], dim=-1).numpy()
    bounds = piece_bounds(logp)
    assert bounds[0] == 0 and bounds[-1] == 2100 and len(bounds) == 3
    assert all(b - a <= MAX_PIECE_FRAMES for a, b in itertools.pairwise(bounds))
    assert all(logp[c].argmax() == 0 for c in bounds[1:-1])  # cut at a blank frame
    for budget in (None, 10.0):
        decoders = BeamDecoders(vocab, config=BeamConfig(time_budget_s=budget))
        beam = decoders.decode_batch(logits, lengths, ["en"])[0]
        greedy = greedy_decode_batch(logits, lengths, ["en"], vocab)[0]
        assert beam.text == greedy.text == " ".join(["the cat sat"] * 3)
        assert [round(w.start, 2) for w in beam.words] == [round(w.start, 2) for w in greedy.words]
        decoders.close()
