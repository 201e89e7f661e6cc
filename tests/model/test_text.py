"""The one text normaliser (model.text): apostrophes, words with combining marks, numerals,
alphabets; the vocabulary and the importers use it."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from model.text import APOSTROPHE, canonical, is_word_char, normalize
from model.train.data.importers import normalize_transcript
from model.vocab import Vocabulary

STRESS = "\u0301"  # combining acute accent: Russian stress mark


def test_every_apostrophe_is_the_ascii_one_inside_words_only() -> None:
    variants = "’‘ʼ`´"
    assert normalize(" ".join(f"L{a}Homme" for a in variants)) == " ".join(["l'homme"] * 5)
    assert all(canonical(a) == APOSTROPHE for a in variants)
    # Quotes around words and elisions at a word's edge are not inside a word.
    assert normalize("'Quoted' ‘text’, rock 'n' roll, un po'") == "quoted text rock n roll un po"
    assert normalize("oo''oo ' -'- don't") == "oo oo don't"


def test_combining_marks_stay_inside_words() -> None:
    # Russian stress marks and Devanagari vowel signs, virama, nukta and candrabindu have no
    # precomposed letter: they are marks (M*) after NFC, and words keep them.
    ru = f"Он сказа{STRESS}л пра{STRESS}вду!"
    assert normalize(ru) == f"он сказа{STRESS}л пра{STRESS}вду"
    hi = "हिन्दी, मैं किताब पढ़ता हूँ।"
    assert normalize(hi).split() == ["हिन्दी", "मैं", "किताब", "पढ़ता", "हूँ"]
    assert any(unicodedata.category(ch).startswith("M") for ch in normalize(hi))
    # Decomposed Latin is composed where Unicode has the letter, kept as marks where not.
    assert normalize("Cafe\u0301 the\u0301a\u0302tre") == "café théâtre"
    assert normalize("E\u0307\u0303") == "ė\u0303"  # Lithuanian ė̃
    assert is_word_char(STRESS) and is_word_char("\u093f") and not is_word_char(APOSTROPHE)


def test_punctuation_symbols_numerals_and_format_characters() -> None:
    assert normalize("  The  CAT—sat, 42 €!\n") == "the cat sat"
    assert normalize("route 66, the 80's") == "route the s"
    assert normalize("route 66, the 80's", numerals=True) == "route 66 the 80's"
    # A soft hyphen or zero-width joiner inside a word is dropped; NFC then joins the letter
    # and mark it stood between.
    assert normalize("Silben\u00adtrennung e\u200d\u0301") == "silbentrennung é"
    assert normalize("") == normalize(" ,;' ") == ""


def test_alphabet_drops_what_a_language_cannot_spell() -> None:
    alphabet = set("lhomex' ")
    assert normalize("L'Ÿ x l’homme", alphabet=alphabet) == "l x l'homme"
    assert normalize("naïve", alphabet=set("nave")) == "nave"


@given(st.text(max_size=40))
def test_normalising_twice_changes_nothing(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert all(ch == " " or ch == APOSTROPHE or is_word_char(ch) for ch in once)


def test_the_vocabulary_and_the_importers_use_it() -> None:
    texts = [f"пра{STRESS}вда, «дороже»", "l’homme"]
    vocab = Vocabulary.build({"xx": texts})
    assert STRESS in vocab.alphabets["xx"] and "'" in vocab.alphabets["xx"]
    for text in texts:
        assert vocab.normalize(text, "xx") == normalize(text)
        assert normalize_transcript(text) == normalize(text, numerals=True)
    # Hotwords go through vocab.normalize too: a stressed word stays one word.
    assert vocab.normalize(f"Пра{STRESS}вда", "xx").split() == [f"пра{STRESS}вда"]
