"""Character vocabulary shared by all languages, with one alphabet per language.

The CTC head predicts over the union of every language's characters; a language decodes
over its own alphabet only. Index 0 is the CTC blank; ``" "`` separates words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BLANK = "<blank>"
SPACE = " "
_APOSTROPHES = str.maketrans({"’": "'", "ʼ": "'", "`": "'", "´": "'"})
_SPACES = re.compile(r"\s+")


def _is_text_char(ch: str) -> bool:
    """Letters, combining marks and the apostrophe are transcribed; the rest is not."""
    return ch == "'" or unicodedata.category(ch)[0] in ("L", "M")


def basic_normalize(text: str) -> str:
    """NFC, lowercase, punctuation and symbols to spaces, collapsed spaces, stripped.

    Digits and other non-letters are dropped (the speech says them as words, the
    transcript should spell them out before it gets here).
    """
    text = unicodedata.normalize("NFC", text).lower().translate(_APOSTROPHES)
    out = []
    for ch in text:
        if _is_text_char(ch):
            out.append(ch)
        elif ch.isspace() or unicodedata.category(ch)[0] in ("P", "S", "Z"):
            out.append(" ")
    return _SPACES.sub(" ", "".join(out)).strip()


@dataclass
class Vocabulary:
    """Token list (index 0 = blank, then space, then characters) and per-language alphabets."""

    tokens: list[str]
    alphabets: dict[str, list[str]]  # language -> its characters (always includes " ")
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != BLANK:
            raise ValueError(f"token 0 must be the CTC blank {BLANK!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")
        self._index = {t: i for i, t in enumerate(self.tokens)}
        for lang, chars in self.alphabets.items():
            if not chars:
                raise ValueError(f"language {lang!r} has an empty alphabet")
            missing = [c for c in chars if c not in self._index]
            if missing:
                raise ValueError(f"alphabet of {lang!r} has characters not in tokens: {missing}")

    @classmethod
    def build(cls, texts_by_language: Mapping[str, Iterable[str]]) -> Vocabulary:
        """Collect each language's characters from its texts (after :func:`basic_normalize`)."""
        alphabets: dict[str, list[str]] = {}
        for lang, texts in texts_by_language.items():
            chars = {SPACE}
            for text in texts:
                chars.update(basic_normalize(text))
            alphabets[lang] = sorted(chars)
        union = sorted(set().union(*alphabets.values()) - {SPACE}) if alphabets else []
        return cls(tokens=[BLANK, SPACE, *union], alphabets=alphabets)

    @property
    def languages(self) -> list[str]:
        """Languages with an alphabet, sorted."""
        return sorted(self.alphabets)

    def __len__(self) -> int:
        return len(self.tokens)

    def _alphabet(self, language: str) -> list[str]:
        try:
            return self.alphabets[language]
        except KeyError:
            raise KeyError(f"language {language!r} has no alphabet in this vocabulary") from None

    def normalize(self, text: str, language: str) -> str:
        """:func:`basic_normalize`, then drop characters outside the language's alphabet."""
        allowed = set(self._alphabet(language))
        kept = "".join(ch for ch in basic_normalize(text) if ch in allowed)
        return _SPACES.sub(" ", kept).strip()

    def encode(self, text: str, language: str) -> list[int]:
        """Token ids of ``text`` as given (normalize first); ValueError names a foreign char."""
        allowed = set(self._alphabet(language))
        ids = []
        for pos, ch in enumerate(text):
            if ch not in allowed:
                raise ValueError(
                    f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the "
                    f"alphabet of {language!r}"
                )
            ids.append(self._index[ch])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (blanks skipped, spaces collapsed; no CTC repeat collapsing)."""
        text = "".join(self.tokens[i] for i in ids if i != 0)
        return _SPACES.sub(" ", text).strip()

    def language_token_ids(self, language: str) -> list[int]:
        """Columns a language decodes over: blank plus its alphabet's tokens, ascending."""
        return [0, *sorted(self._index[c] for c in self._alphabet(language))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "tokens": list(self.tokens),
            "alphabets": {k: list(v) for k, v in self.alphabets.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tokens=list(d["tokens"]), alphabets={k: list(v) for k, v in d["alphabets"].items()}
        )
