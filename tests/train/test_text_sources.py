"""Text sources read only the files their named Debian packages installed: whatever else the
machine has installed never changes a language's sentence pool, hence its seeded split."""

from __future__ import annotations

from pathlib import Path

from model.text import normalize
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from model.train.data.text_sources import (
    EXTRA_SOURCES,
    SOURCES,
    TextSource,
    clean_sentences,
    load_language_text,
    normalize_sentence,
    package_files,
    package_version,
    pool_sha256,
    read_documents,
)

# Installed by TEST_APT for this test only: it has nothing to do with our text sources, but
# puts English pages in /usr/share/man/man5 and man7 and French ones in /usr/share/man/fr,
# where the en and fr sources read (as dpkg, apt and most other packages do).
UNRELATED = "debconf-doc"


def _under_parts(path: Path, source: TextSource) -> bool:
    return any(path == Path(raw) or Path(raw) in path.parents for _, raw in source.parts)


def _pool(source: TextSource, files: list[tuple[str, Path]]) -> list[str]:
    documents = read_documents(files)
    return clean_sentences(
        documents, source.language, source.script, filter_english=source.filter_english
    ).sentences


def test_every_source_reads_only_files_its_packages_installed() -> None:
    # v1's sources and the v2 corpus's extra ones (EXTRA_SOURCES, keyed by name)
    for lang, source in {**SOURCES, **EXTRA_SOURCES}.items():
        owned = {p for package in source.debian_packages for p in package_files(package)}
        files = source.files()
        assert files, (lang, "no files: are its Debian packages installed?")
        assert files == sorted(files)
        assert all(path in owned and _under_parts(path, source) for _, path in files), lang
        # Fortune files with a non-empty UTF-8 twin are read through the twin (fortunes-min's
        # twins are links back to the file itself).
        for _, path in files:
            twin = path.with_name(path.name + ".u8")
            if path.suffix != ".u8" and twin in owned and twin.stat().st_size > 0:
                assert twin.resolve() == path, (lang, path)


def test_an_unrelated_package_leaves_every_pool_unchanged() -> None:
    foreign = {p for p in package_files(UNRELATED) if p.is_file()}
    assert foreign, f"{UNRELATED} is not installed: `make setup-dev` installs it (TEST_APT)"
    for lang in ("en", "fr"):
        source = SOURCES[lang]
        files = source.files()
        pool = load_language_text(lang).sentences
        # Its pages lie where this language reads, with sentences the cleaning keeps: taken
        # into account (as a folder listing would), they change the pool ...
        pages = [("manpage", p) for p in sorted(foreign) if _under_parts(p, source)]
        assert pages, (lang, f"{UNRELATED} no longer puts pages under {source.parts}")
        assert pool_sha256(_pool(source, sorted(files + pages))) != pool_sha256(pool), lang
        # ... while the pool we build is the one without them, byte for byte.
        without = [(kind, path) for kind, path in files if path not in foreign]
        assert pool_sha256(pool) == pool_sha256(_pool(source, without)), lang
    # No other language, and no extra source, reads any of its files either.
    for lang, source in {**SOURCES, **EXTRA_SOURCES}.items():
        read = [path for _, path in source.files() if path in foreign]
        assert not read, (lang, read[:3])


def test_the_corpus_records_package_versions_and_the_pool_hash(tmp_path: Path) -> None:
    config = SyntheticCorpusConfig(high_resource=("pt",), low_resource=(), workers=1)
    corpus = build_synthetic_corpus(config, tmp_path / "corpus", only=())  # no audio
    source = corpus.summary["languages"]["pt"]["source"]
    version = package_version("fortunes-br")
    assert version and source["package_versions"] == {"fortunes-br": version}
    sentences = load_language_text("pt").sentences
    assert source["sentences_available"] == len(sentences)
    assert source["pool_sha256"] == pool_sha256(sentences)
    assert package_version("no-such-package-lass") is None


def test_sentences_are_the_shared_normalisers_text_or_refused() -> None:
    kept = ["L‘homme qu’il «aime», don't!", "'Quoted' words; here…", "Ну, пра-вда?"]
    for raw, script in zip(kept, ("LATIN", "LATIN", "CYRILLIC"), strict=True):
        assert normalize_sentence(raw, script) == normalize(raw), raw
    # What the shared normaliser would change silently is refused: digits, symbols, format
    # characters, letters of another script, combining marks (the recorded pools have none).
    for raw in (
        "in 1999 it was",
        "a ° b",
        "soft\u00adhyphen here",
        "le café grec α",
        "пра\u0301вда",
    ):
        assert normalize_sentence(raw, "CYRILLIC" if "пра" in raw else "LATIN") is None, raw
