"""Real sentences per language from Debian text packages, cleaned for speech synthesis.

Sources (all Debian packages; see ``TEST_APT`` in the Makefile):

- ``fortunes-*`` cookie files (``%``-separated quotes, proverbs, jokes):
  en (fortunes-min), de, es, it, pl, ru, cs, pt (fortunes-br), bg, eo.
- ``manpages-*`` translated manual pages (groff; only running text is kept):
  fr, nl, sv, fi. Their sentences are technical ("show this help and exit") but
  real, grammatical text written by people.

A source reads exactly the files its named packages installed (``dpkg-query -L``) that lie
under its parts, never a folder listing: /usr/share/man/man7 or /usr/share/man/fr is
filled by every installed package (dpkg itself ships French pages), so a listing would
make the sentence pool, and the seeded split drawn from it, depend on the machine.

Cleaning keeps sentences a TTS voice can say and a character-level CTC model can
learn: split into sentences, drop any with digits, URLs, e-mail, markup or other
symbols, or letters outside the language's script; strip punctuation except the
in-word apostrophe; lowercase; keep 3..15 words; deduplicate.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.text import APOSTROPHE, SEPARATOR, canonical, is_word_char
from model.text import normalize as normalize_text

FORTUNES = Path("/usr/share/games/fortunes")
MANPAGES = Path("/usr/share/man")


@dataclass(frozen=True)
class TextSource:
    """Where one language's raw text lives and how to read it."""

    language: str  # our language code (also the manifest's ``language``)
    espeak_voice: str  # espeak-ng voice for this language
    script: str  # Unicode script prefix of the letters allowed, e.g. "LATIN", "CYRILLIC"
    debian_packages: tuple[str, ...]  # only files these packages installed are read
    parts: tuple[tuple[str, str], ...]  # (kind, file or folder); kind "fortune" or "manpage"
    # Translated manual pages keep some paragraphs in English: drop English-looking sentences.
    filter_english: bool = False

    def documents(self) -> Iterator[str]:
        """Yield raw text blocks (one fortune, or one paragraph of a manual page)."""
        return read_documents(self.files())

    def files(self) -> list[tuple[str, Path]]:
        """(kind, file) pairs of the files the source's packages installed under its parts,
        sorted (deterministic), UTF-8 ``.u8`` twins preferred."""
        owned = {p for package in self.debian_packages for p in package_files(package)}
        chosen: set[tuple[str, Path]] = set()
        for kind, raw in self.parts:
            part = Path(raw)
            for file in sorted(p for p in owned if p == part or part in p.parents):
                if not file.is_file() or file.suffix == ".dat":  # .dat: strfile index
                    continue
                if file.stat().st_size == 0:
                    continue  # fortunes-pl ships empty .u8 placeholders
                twin = file.with_name(file.name + ".u8")
                # A non-empty .u8 twin holds the same cookies as UTF-8.
                use_twin = (
                    file.suffix != ".u8"
                    and twin in owned
                    and twin.is_file()
                    and twin.stat().st_size > 0
                )
                target = (twin if use_twin else file).resolve()
                # A link the package ships may point at a file another package owns.
                if target in owned:
                    chosen.add((kind, target))
        return sorted(chosen)

    def package_versions(self) -> dict[str, str | None]:
        """Installed version of each named package (None: not installed)."""
        return {package: package_version(package) for package in self.debian_packages}

    def available(self) -> bool:
        return bool(self.files())


def package_files(package: str) -> set[Path]:
    """Every path an installed Debian package owns (``dpkg-query -L``); empty when the
    package is not installed or the system has no dpkg."""
    try:
        listed = subprocess.run(
            ["dpkg-query", "-L", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return set()
    if listed.returncode != 0:
        return set()
    # Other lines ("diverted by ...", "package diverts others to: ...") are not paths.
    return {Path(line) for line in listed.stdout.splitlines() if line.startswith("/")}


def package_version(package: str) -> str | None:
    """The installed version of a Debian package (``dpkg-query -W``), None if not installed."""
    try:
        queried = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    status, _, version = queried.stdout.partition(" ")
    # dpkg also knows removed packages (status "not-installed" or "config-files").
    if queried.returncode != 0 or status != "installed":
        return None
    return version.strip()


def pool_sha256(sentences: Sequence[str]) -> str:
    """sha256 of a sentence pool joined with newlines: equal pools, equal seeded splits."""
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


def read_documents(files: Iterable[tuple[str, Path]]) -> Iterator[str]:
    """Raw text blocks of (kind, file) pairs: one fortune, or one paragraph of a manual page."""
    for kind, file in files:
        text = _read_text(file)
        if kind == "fortune":
            yield from _fortune_blocks(text)
        elif kind == "manpage":
            yield from _manpage_paragraphs(text)
        else:
            raise ValueError(f"unknown text source kind {kind!r}")


def _fortunes(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple(("fortune", str(FORTUNES / n)) for n in names)


def _man(*sub: str) -> tuple[tuple[str, str], ...]:
    return tuple(("manpage", str(MANPAGES / s)) for s in sub)


# The default sources: 14 languages. Keys are the language codes used in manifests.
SOURCES: dict[str, TextSource] = {
    s.language: s
    for s in (
        # fortunes-min alone gives ~1100 sentences: English manual pages (overviews and
        # file formats, sections 5 and 7) add running prose.
        TextSource(
            "en", "en", "LATIN", ("fortunes-min", "manpages"),
            _fortunes("fortunes", "literature", "riddles") + _man("man5", "man7"),
        ),
        TextSource("de", "de", "LATIN", ("fortunes-de",), _fortunes("de")),
        TextSource("es", "es", "LATIN", ("fortunes-es",), _fortunes("es")),
        TextSource("it", "it", "LATIN", ("fortunes-it",), _fortunes("it")),
        TextSource("pl", "pl", "LATIN", ("fortunes-pl",), _fortunes("pl")),
        TextSource("ru", "ru", "CYRILLIC", ("fortunes-ru",), _fortunes("ru")),
        TextSource("cs", "cs", "LATIN", ("fortunes-cs",), _fortunes("cs")),
        TextSource("pt", "pt-br", "LATIN", ("fortunes-br",), _fortunes("brasil")),
        TextSource("bg", "bg", "CYRILLIC", ("fortunes-bg",), _fortunes("bg")),
        TextSource("eo", "eo", "LATIN", ("fortunes-eo",), _fortunes("eo")),
        TextSource("fr", "fr-fr", "LATIN", ("manpages-fr",), _man("fr"), filter_english=True),
        TextSource("nl", "nl", "LATIN", ("manpages-nl",), _man("nl"), filter_english=True),
        TextSource("sv", "sv", "LATIN", ("manpages-sv",), _man("sv"), filter_english=True),
        TextSource("fi", "fi", "LATIN", ("manpages-fi",), _man("fi"), filter_english=True),
    )
}  # fmt: skip


# More text for a language (issue 19: v1's text was mostly fortune cookies), named so that a
# corpus config adds them to a language's pool (``extra_text``) without changing SOURCES:
# v1's pools, and the seeded splits drawn from them, stay what they were.
def _translated_man(language: str, voice: str, package: str, folder: str) -> TextSource:
    """manpages-l10n's translations: technical, but running prose written by people."""
    script = "CYRILLIC" if language == "ru" else "LATIN"
    # Untranslated English paragraphs: Cyrillic text loses them to the script check.
    return TextSource(language, voice, script, (package,), _man(folder), script == "LATIN")


EXTRA_SOURCES: dict[str, TextSource] = {
    # The full English fortune collection (computers, science, wisdom, zippy, ...).
    "en-fortunes": TextSource("en", "en", "LATIN", ("fortunes",), _fortunes("")),
    "de-man": _translated_man("de", "de", "manpages-de", "de"),
    "es-man": _translated_man("es", "es", "manpages-es", "es"),
    "it-man": _translated_man("it", "it", "manpages-it", "it"),
    "pl-man": _translated_man("pl", "pl", "manpages-pl", "pl"),
    "ru-man": _translated_man("ru", "ru", "manpages-ru", "ru"),
    "cs-man": _translated_man("cs", "cs", "manpages-cs", "cs"),
    "pt-man": _translated_man("pt", "pt-br", "manpages-pt-br", "pt_BR"),
}


# Frequent English words that are not also frequent words of fr/nl/sv/fi.
_ENGLISH_MARKERS = frozenset(
    "the of and to with this that for are from which when you your be by not if "
    "was were has have been can should must".split()
)


def looks_english(sentence: str) -> bool:
    """True for a sentence with two or more English function words (or "the")."""
    words = sentence.split()
    hits = sum(w in _ENGLISH_MARKERS for w in words)
    return "the" in words or hits >= 2


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old fortune files without a .u8 twin
    # Overstrike sequences ("_\bX", "X\bX") from old fortune files: keep the last character.
    return re.sub(r".\x08", "", text)


def _fortune_blocks(text: str) -> Iterator[str]:
    for block in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        lines = []
        for line in block.splitlines():
            # Attribution lines ("-- Mark Twain") are names, not sentences.
            if re.match(r"^\s*(--|—|―)", line):
                continue
            lines.append(line)
        block = " ".join(lines).strip()
        if block:
            yield block


_GROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes \fB \fI \fR \fP \f(CW
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), "\x00"),  # strings: unknown text -> reject
    (re.compile(r"\\\((em|en|hy)"), " - "),
    (re.compile(r"\\\(aq"), "'"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[&%|^]"), ""),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\e"), "\x00"),  # a literal backslash: code, reject
]


def _manpage_paragraphs(text: str) -> Iterator[str]:
    """Running text of a groff page: macro lines end a paragraph; only prose lines are kept."""
    paragraph: list[str] = []
    skip_tag = False
    for line in text.splitlines():
        if line.startswith((".", "'")):
            if paragraph:
                yield " ".join(paragraph)
                paragraph = []
            # The line after .TP is the paragraph's tag (an option name), not prose.
            skip_tag = line.startswith((".TP", ".TQ"))
            continue
        if skip_tag:
            skip_tag = False
            continue
        for pattern, repl in _GROFF_ESCAPES:
            line = pattern.sub(repl, line)
        if "\\" in line or "\x00" in line:
            if paragraph:
                yield " ".join(paragraph)
                paragraph = []
            continue
        paragraph.append(line.strip())
    if paragraph:
        yield " ".join(paragraph)


@dataclass(frozen=True)
class CleaningConfig:
    """Which sentences to keep."""

    min_words: int = 3
    max_words: int = 15
    # Characters rarer than this (fraction of all kept characters) are dropped from the
    # alphabet, and sentences that use them with it: stray loanword letters, typos.
    min_char_fraction: float = 2e-4


# Sentence ends; abbreviations are rare enough in this text that a wrong split only
# yields a short fragment, which the word-count filter then drops.
_SENTENCE_END = re.compile(r"(?<=[.!?;:…])\s+|\s+[-–—]\s+")
_BAD = re.compile(r"\d|https?:|www\.|@|\.[a-z]{2,4}/|[/\\<>{}\[\]|_=+*#$%^~`&§]")
# Punctuation that may stand around words; removed before the text is kept.
_PUNCT = re.compile(r"[.,!?;:…\"«»„“”‚()¡¿\-–—]")


def split_sentences(document: str) -> list[str]:
    """Raw sentences of one block (whitespace collapsed)."""
    text = re.sub(r"\s+", " ", document).strip()
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def normalize_sentence(sentence: str, script: str) -> str | None:
    """The sentence as :func:`model.text.normalize` writes it, or None when it is not
    speakable plain text: only letters of ``script``, apostrophes, whitespace and the
    punctuation in ``_PUNCT`` may occur."""
    # Checked before lower-casing, as the recorded pools were: _BAD's patterns are lower
    # case, so "HTTP: ..." passes (and loses its colon) where "http: ..." does not.
    s = canonical(sentence)
    if _BAD.search(s):
        return None
    s = _PUNCT.sub(" ", s)
    # The shared normaliser would turn other punctuation and symbols into spaces and drop
    # digits and format characters: such a sentence is not plain text, refused here.
    if not all(ch.isspace() or ch == APOSTROPHE or is_word_char(ch) for ch in s):
        return None
    s = normalize_text(s)
    if not s:
        return None
    for ch in s:
        if ch in (SEPARATOR, APOSTROPHE):
            continue
        # Combining marks are refused too (the normaliser keeps them in words): the recorded
        # pools, and the seeded splits drawn from them, were made by this rule.
        if not ch.isalpha():
            return None
        if not unicodedata.name(ch, "").startswith(script):
            return None  # foreign script (a Latin word in Russian text, a Greek letter...)
    return s


@dataclass
class CleanText:
    """Cleaned sentences of one language and the alphabet they use."""

    language: str
    sentences: list[str]
    alphabet: list[str]  # sorted characters, " " included
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count


def clean_sentences(
    documents: Iterable[str],
    language: str,
    script: str,
    config: CleaningConfig | None = None,
    filter_english: bool = False,
) -> CleanText:
    """Split, filter, normalize and deduplicate; order of first appearance is kept."""
    config = config or CleaningConfig()
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    candidates: list[str] = []
    for doc in documents:
        for raw in split_sentences(doc):
            s = normalize_sentence(raw, script)
            if s is None:
                dropped["symbols"] += 1
                continue
            n_words = len(s.split())
            if not config.min_words <= n_words <= config.max_words:
                dropped["length"] += 1
                continue
            if filter_english and looks_english(s):
                dropped["english"] += 1
                continue
            if s in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(s)
            candidates.append(s)
    counts = Counter(ch for s in candidates for ch in s)
    total = max(1, sum(counts.values()))
    alphabet = {ch for ch, n in counts.items() if n / total >= config.min_char_fraction}
    alphabet.add(" ")
    kept = []
    for s in candidates:
        if set(s) <= alphabet:
            kept.append(s)
        else:
            dropped["rare_character"] += 1
    used = {ch for s in kept for ch in s} | {" "}
    return CleanText(language, kept, sorted(used), dropped)


def load_language_text(
    language: str,
    sources: dict[str, TextSource] | None = None,
    config: CleaningConfig | None = None,
) -> CleanText:
    """Cleaned sentences for one language from its Debian source; KeyError if unknown."""
    source = (sources or SOURCES)[language]
    if not source.available():
        raise FileNotFoundError(
            f"no text for language {language!r}: install the Debian packages "
            f"{' '.join(source.debian_packages)}"
        )
    return clean_sentences(
        source.documents(), language, source.script, config, source.filter_english
    )


def available_languages(sources: Sequence[TextSource] | None = None) -> list[str]:
    """Languages whose Debian text package is installed here."""
    return sorted(s.language for s in (sources or SOURCES.values()) if s.available())
