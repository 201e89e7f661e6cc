"""The synthetic corpus builder on a tiny config: splits by sentence, determinism, layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.train.data.manifest import read_manifest
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus, load_corpus
from model.train.data.text_sources import SOURCES, clean_sentences, load_language_text
from model.train.data.validate import ValidationConfig, validate_manifest

REPO = Path(__file__).resolve().parents[2]

TEXTS = {
    "en": ["the cat sat on the mat", "good morning to you all", "where is the old train station",
           "she sells sea shells", "a cup of hot tea please", "the rain falls on the plain"],
    "de": ["guten morgen und willkommen", "das wetter ist heute schön", "ich trinke gerne kaffee",
           "wo ist der bahnhof bitte", "der hund läuft im park", "wir fahren morgen nach hause"],
    "es": ["buenos días a todos", "el perro come pan", "la casa es muy grande",
           "me gusta el café con leche", "vamos a la playa mañana", "el niño juega en el jardín"],
}  # fmt: skip


def _config(tmp_path: Path, workers: int, **kw: object) -> SyntheticCorpusConfig:
    files = {}
    for lang, lines in TEXTS.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[lang] = str(path)
    base: dict[str, object] = dict(
        high_resource=("en", "de"),
        low_resource=("es",),
        high_minutes=0.15,  # 9 s
        low_minutes=0.05,  # 3 s
        dev_sentences=1,
        test_sentences=1,
        text_files=files,
        workers=workers,
        chunk=3,
        seed=7,
    )
    base.update(kw)
    return SyntheticCorpusConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
def test_tiny_corpus(tmp_path: Path) -> None:
    config = _config(tmp_path, workers=2)
    corpus = build_synthetic_corpus(config, tmp_path / "corpus")
    root = corpus.root
    assert not (tmp_path / "corpus.partial").exists()
    for split in ("train", "dev", "test"):
        assert read_manifest(root / f"{split}.jsonl") == getattr(corpus, split)
    # sentence-disjoint splits; dev/test speak each of their sentences once
    for lang in TEXTS:
        texts = {s: {e.text for e in getattr(corpus, s) if e.language == lang} for s in
                 ("train", "dev", "test")}  # fmt: skip
        assert len(texts["dev"]) == len(texts["test"]) == 1
        assert not texts["train"] & (texts["dev"] | texts["test"])
        assert not texts["dev"] & texts["test"]
        lm_text = (root / "text" / f"{lang}.txt").read_text(encoding="utf-8").split("\n")
        assert set(filter(None, lm_text)) == set(TEXTS[lang]) - texts["dev"] - texts["test"]
    # train time per language reaches its target; high > low
    seconds = {lang: sum(e.duration for e in corpus.train if e.language == lang) for lang in TEXTS}
    assert seconds["en"] >= 9 and seconds["de"] >= 9 and 3 <= seconds["es"] < 9
    # the target is reached by the last utterance only (no surplus)
    for lang in TEXTS:
        durs = [e.duration for e in corpus.train if e.language == lang]
        assert sum(durs[:-1]) < config.target_seconds(lang)
    # audio: 16 kHz mono 16-bit; the manifest durations are the files' durations
    files = sorted((root / "audio").rglob("*.wav"))
    assert len(files) == len(corpus.train) + len(corpus.dev) + len(corpus.test)
    for entry in corpus.train[:5] + corpus.test:
        info = sf.info(str(root / entry.audio))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(entry.duration, abs=1e-3)
    # voices vary
    assert len({e.speaker for e in corpus.train}) > 3
    kept, report = validate_manifest(root / "train.jsonl", ValidationConfig(
        languages=list(TEXTS), alphabets=corpus.alphabets))  # fmt: skip
    assert report.n_skipped == 0 and len(kept) == len(corpus.train)
    summary = json.loads((root / "corpus.json").read_text())
    assert summary["languages"]["de"]["alphabet"] == corpus.alphabets["de"]
    assert "ö" in corpus.alphabets["de"] and "ö" not in corpus.alphabets["en"]
    assert summary["languages"]["es"]["train"]["seconds"] == pytest.approx(seconds["es"], abs=0.01)

    # building again with the same config reuses it; another config refuses to overwrite
    assert load_corpus(root).train == build_synthetic_corpus(config, root).train
    with pytest.raises(FileExistsError):
        build_synthetic_corpus(_config(tmp_path, workers=2, seed=8), root)

    # deterministic from the seed, whatever the number of workers: the same audio up to
    # float rounding (threaded FFTs may round differently by one 16-bit step)
    again = build_synthetic_corpus(_config(tmp_path, workers=1), tmp_path / "again")
    assert again.train == corpus.train and again.test == corpus.test
    for entry in corpus.train:
        a, _ = sf.read(str(root / entry.audio), dtype="int16")
        b, _ = sf.read(str(again.root / entry.audio), dtype="int16")
        assert a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 2, entry.audio

    # one split alone is the same split as in the full build (seeded per language and split)
    only = build_synthetic_corpus(config, tmp_path / "only-test", only=("test",))
    assert only.test == corpus.test and only.train == [] and only.dev == []
    for entry in corpus.test:
        a, _ = sf.read(str(root / entry.audio), dtype="int16")
        b, _ = sf.read(str(only.root / entry.audio), dtype="int16")
        assert np.array_equal(a, b), entry.audio
    # the training text is still written (to check that new sentences are unseen)
    assert (only.root / "text" / "en.txt").read_text() == (root / "text" / "en.txt").read_text()
    # a test-only corpus does not stand in for a full one
    with pytest.raises(FileExistsError):
        build_synthetic_corpus(config, only.root)
    with pytest.raises(ValueError, match="unknown split"):
        build_synthetic_corpus(config, tmp_path / "bad", only=("tests",))


def test_too_few_sentences(tmp_path: Path) -> None:
    config = _config(tmp_path, workers=1)
    (tmp_path / "es.txt").write_text("uno dos tres\ncuatro cinco seis\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"es: too few sentences \(2\)"):
        build_synthetic_corpus(config, tmp_path / "c")
    assert not (tmp_path / "c.partial" / "audio").exists()  # failed before any synthesis


def test_config_from_toml() -> None:
    default = SyntheticCorpusConfig.from_toml(REPO / "configs" / "corpus" / "default.toml")
    assert len(default.languages) >= 10
    assert default.target_seconds("en") == 7200 and default.target_seconds("nl") == 900
    assert all(lang in SOURCES for lang in default.languages)
    assert default.augment.snr_db_range == (5.0, 30.0)
    tiny = SyntheticCorpusConfig.from_toml(REPO / "configs" / "corpus" / "tiny.toml")
    assert len(tiny.languages) == 3
    with pytest.raises(ValueError, match="unknown corpus config keys"):
        SyntheticCorpusConfig.from_dict({"langs": ["en"]})
    assert SyntheticCorpusConfig.from_dict(default.to_dict()) == default


def test_cleaning_rules() -> None:
    docs = [
        "Hello there, my friend! Visit http://example.com now. I have 3 apples.",
        "«Don’t panic», said the guide; it is only a test of the system.",
        "Short one. Ab cd. This sentence is far too long to be kept because it goes on "
        "and on and on and on without end.",
        "Hello there my friend",  # duplicate after normalization
        "Привет мир как дела",  # wrong script for a LATIN language
    ]
    clean = clean_sentences(docs, "en", "LATIN")
    assert clean.sentences == [
        "hello there my friend",
        "don't panic said the guide",
        "it is only a test of the system",
    ]
    assert clean.dropped["symbols"] >= 3  # URL, digit, Cyrillic
    assert clean.dropped["duplicate"] == 1
    assert set("".join(clean.sentences)) | {" "} == set(clean.alphabet)


@pytest.mark.parametrize("lang", sorted(SOURCES))
def test_debian_text_sources(lang: str) -> None:
    """Every default language has real cleaned sentences (Debian packages in TEST_APT)."""
    text = load_language_text(lang)
    assert len(text.sentences) >= 500, (lang, len(text.sentences))
    lengths = [len(s.split()) for s in text.sentences]
    assert min(lengths) >= 3 and max(lengths) <= 15
    assert all(s == s.lower() and not any(ch.isdigit() for ch in s) for s in text.sentences)
    assert 20 <= len(text.alphabet) <= 45
