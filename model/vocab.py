"""Character vocabulary shared by all languages, with one alphabet per language.

The CTC head predicts over the union of every language's characters; a language decodes
over its own alphabet only. Index 0 is the CTC blank; ``" "`` separates words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.text import SEPARATOR
from model.text import normalize as normalize_text

BLANK = "<blank>"
SPACE = SEPARATOR
_SPACES = re.compile(r"\s+")


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
        """Collect each language's characters from its texts (after
        :func:`model.text.normalize`: letters, combining marks, in-word apostrophes)."""
        alphabets: dict[str, list[str]] = {}
        for lang, texts in texts_by_language.items():
            chars = {SPACE}
            for text in texts:
                chars.update(normalize_text(text))
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
        """:func:`model.text.normalize` with the characters outside the language's alphabet
        dropped: the words this language's decoder can spell."""
        return normalize_text(text, alphabet=set(self._alphabet(language)))

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


@dataclass
class ColumnVocabulary:
    """The vocabulary a server decodes with once languages can be added and removed.

    Columns ``[0, base_size)`` are the bundle's tokens and never change. Each added language
    appends its own columns for the characters the bundle lacks (its language pack's new CTC
    rows), so two added languages may each have a column for the same character: a column
    belongs to the languages that list it in :attr:`columns`, and tokens may repeat.
    Never modified (not frozen only because decoding's protocol wants a plain ``tokens``
    attribute): adding or removing a language makes a new one, so a decode that holds the
    old one keeps a consistent view while the model thread swaps the head.
    """

    tokens: list[str]  # may repeat a character (see above); never modified
    alphabets: Mapping[str, tuple[str, ...]]
    columns: Mapping[str, tuple[int, ...]]  # language -> blank + its columns, ascending
    base_size: int  # the bundle's tokens: columns below this are shared and fixed

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary) -> ColumnVocabulary:
        """The bundle's vocabulary, every language on its own alphabet's columns."""
        return cls(
            tokens=list(vocab.tokens),
            alphabets={k: tuple(v) for k, v in vocab.alphabets.items()},
            columns={k: tuple(vocab.language_token_ids(k)) for k in vocab.alphabets},
            base_size=len(vocab.tokens),
        )

    @property
    def languages(self) -> list[str]:
        """Languages with columns, sorted."""
        return sorted(self.columns)

    def __len__(self) -> int:
        return len(self.tokens)

    def language_token_ids(self, language: str) -> list[int]:
        """Columns ``language`` decodes over: blank plus its alphabet's columns, ascending."""
        try:
            return list(self.columns[language])
        except KeyError:
            raise KeyError(f"language {language!r} has no alphabet in this vocabulary") from None

    def width(self, language: str) -> int:
        """Logit columns a sample of ``language`` needs: its highest column + 1. Fixed for as
        long as the language is served, so logits of one utterance computed before and after
        another language was added still concatenate."""
        return max(self.language_token_ids(language)) + 1

    def normalize(self, text: str, language: str) -> str:
        """:func:`model.text.normalize` with the characters outside the language's alphabet
        dropped: the words this language's decoder can spell."""
        try:
            allowed = set(self.alphabets[language])
        except KeyError:
            raise KeyError(f"language {language!r} has no alphabet in this vocabulary") from None
        return normalize_text(text, alphabet=allowed)

    def with_language(
        self, language: str, alphabet: Sequence[str], new_tokens: Sequence[str]
    ) -> ColumnVocabulary:
        """This vocabulary plus ``language``: ``new_tokens`` (in this order) get new columns at
        the end, every other character of ``alphabet`` must be one of the bundle's tokens
        (columns below :attr:`base_size`). ValueError otherwise."""
        if language in self.columns:
            raise ValueError(f"language {language!r} is already in the vocabulary")
        if SPACE not in alphabet:
            raise ValueError(f"alphabet of {language!r} lacks the word separator {SPACE!r}")
        if len(set(alphabet)) != len(alphabet) or len(set(new_tokens)) != len(new_tokens):
            raise ValueError(f"alphabet or new tokens of {language!r} repeat a character")
        base = {t: i for i, t in enumerate(self.tokens[: self.base_size])}
        stray = [t for t in new_tokens if t not in alphabet or t in base or t == BLANK]
        if stray:
            raise ValueError(
                f"new tokens of {language!r} must be characters of its alphabet that the bundle "
                f"lacks: {stray}"
            )
        first = len(self.tokens)
        own = {t: first + i for i, t in enumerate(new_tokens)}
        ids = []
        for ch in alphabet:
            if ch in own:
                ids.append(own[ch])
            elif ch in base:
                ids.append(base[ch])
            else:
                raise ValueError(
                    f"character {ch!r} of {language!r} is neither a bundle token nor a new token"
                )
        return ColumnVocabulary(
            tokens=[*self.tokens, *new_tokens],
            alphabets={**self.alphabets, language: tuple(alphabet)},
            columns={**self.columns, language: (0, *sorted(ids))},
            base_size=self.base_size,
        )

    def without_language(self, language: str) -> ColumnVocabulary:
        """This vocabulary less ``language``. Trailing columns no language uses any more are
        dropped (the head drops the same rows); columns in the middle stay, unused, so that
        no served language's columns move while it is served."""
        if language not in self.columns:
            raise KeyError(f"language {language!r} has no alphabet in this vocabulary")
        columns = {k: v for k, v in self.columns.items() if k != language}
        used = max([self.base_size - 1, *(max(v) for v in columns.values())])
        return ColumnVocabulary(
            tokens=self.tokens[: used + 1],
            alphabets={k: v for k, v in self.alphabets.items() if k != language},
            columns=columns,
            base_size=self.base_size,
        )
