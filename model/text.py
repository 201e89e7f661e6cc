"""The one text normaliser: what a transcript's text and its words are, everywhere in lass.

Reference transcripts, training targets, LM text, hotwords and the synthetic corpus's
sentences all go through :func:`normalize`, so the words an LM is estimated on are the
words the CTC decoder spells.

A *word* is a maximal run of word characters: letters (Unicode category L*), combining
marks (M*: Russian stress marks, Devanagari vowel signs and viramas, accents that have no
precomposed letter), numerals (N*) only where a caller asks for them, and the apostrophe
when it stands between two of these (``l'homme``, ``don't``; not quotes around a word).
Normalised text is its words joined by single spaces: exactly the decoder's view, whose
alphabets hold word characters and the separator ``" "`` only.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Container

APOSTROPHE = "'"
SEPARATOR = " "
# Every character people type for an apostrophe: right and left single quotes, the
# modifier letter (Ukrainian, Belarusian), grave and acute accents.
_APOSTROPHES = str.maketrans(dict.fromkeys("’‘ʼ`´", APOSTROPHE))


def canonical(text: str) -> str:
    """NFC with every apostrophe variant as ``"'"``; case and everything else kept."""
    return unicodedata.normalize("NFC", text).translate(_APOSTROPHES)


def is_word_char(ch: str, numerals: bool = False) -> bool:
    """Letters and combining marks (and numerals when asked): what words are made of.

    The apostrophe is not one: it belongs to a word only between two word characters.
    """
    kind = unicodedata.category(ch)[0]
    return kind in ("L", "M") or (numerals and kind == "N")


def _dropped(ch: str, numerals: bool) -> bool:
    """Control and format characters (but whitespace), and numerals unless kept."""
    kind = unicodedata.category(ch)[0]
    return (kind == "C" and not ch.isspace()) or (kind == "N" and not numerals)


def normalize(text: str, numerals: bool = False, alphabet: Container[str] | None = None) -> str:
    """Text as space-separated lowercase words (see the module's definition of a word).

    Control and format characters (soft hyphen, zero-width joiners) are dropped, and so are
    numerals unless ``numerals`` (the importers keep them so that validation can ask for
    them to be spelled out); then :func:`canonical` and lowercase; punctuation, symbols,
    separators and whitespace become spaces; word characters outside ``alphabet``, when one
    is given, are dropped. Apostrophes that are not inside a word become spaces; spaces are
    collapsed and stripped. Normalising the result again (without ``alphabet``) changes
    nothing.
    """
    # Dropped before NFC, which then joins a letter and a mark they stood between.
    text = "".join(ch for ch in text if not _dropped(ch, numerals))
    # NFC again after lower-casing, which can leave marks out of order (İ is i + U+0307).
    text = unicodedata.normalize("NFC", canonical(text).lower())
    kept: list[str] = []
    for ch in text:
        if ch == APOSTROPHE or is_word_char(ch, numerals):
            if alphabet is None or ch in alphabet:
                kept.append(ch)
        else:  # punctuation, symbols, separators, whitespace
            kept.append(SEPARATOR)
    # Only after dropping: a character the alphabet lacks leaves its neighbours adjacent.
    last = len(kept) - 1
    for i, ch in enumerate(kept):
        if ch == APOSTROPHE and not (
            0 < i < last
            and is_word_char(kept[i - 1], numerals)
            and is_word_char(kept[i + 1], numerals)
        ):
            kept[i] = SEPARATOR
    return SEPARATOR.join("".join(kept).split())
