"""The embedded default model (model/default_bundle): it loads, it transcribes sentences it
never saw in each of its languages, and the figures in its manifest are what our own
evaluation gives on the held-out synthetic test split."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from model.bundle import Bundle, read_bundle
from model.decoding import BeamConfig
from model.train.data.espeak import Voice, synthesize_to_wav
from model.train.data.manifest import ManifestEntry
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from model.train.data.text_sources import SOURCES, load_language_text
from model.train.evaluate import evaluate
from service.settings import DEFAULT_BUNDLE

# Written for this test: not from the Debian texts the corpus speaks (checked below).
FRESH: dict[str, str] = {
    "en": "my brother reads a long book every evening",
    "de": "meine schwester kauft heute frisches brot",
    "es": "mi hermano lee un libro muy largo cada noche",
    "it": "mia sorella compra il pane fresco ogni mattina",
    "pl": "mój brat czyta długą książkę każdego wieczoru",
    "ru": "мой брат читает длинную книгу каждый вечер",
    "cs": "můj bratr čte dlouhou knihu každý večer",
    "pt": "meu irmão lê um livro muito longo toda noite",
    "fr": "mon frère lit un long livre chaque soir",
    "nl": "mijn broer leest elke avond een lang boek",
}


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    # No skip when it is missing: the repository ships it, and a checkout without it fails here.
    # stored in fp16 to stay small; served and evaluated in fp32 on the CPU
    return read_bundle(DEFAULT_BUNDLE, dtype=torch.float32)


def test_default_bundle_is_small_trained_and_multilingual(bundle: Bundle) -> None:
    size = sum(f.stat().st_size for f in DEFAULT_BUNDLE.rglob("*") if f.is_file())
    assert size <= 30 * 1024 * 1024
    languages = bundle.model.languages
    assert len(languages) >= 8
    provenance = bundle.manifest["provenance"]
    assert provenance["method"] == "lass"
    assert [s["stage"] for s in provenance["stages"]] == ["pretrain", "adapt", "finetune"]
    hours = provenance["data"]["train"]["hours"]
    assert max(hours.values()) > 2 * min(hours.values()), "high- and low-resource languages"
    density = bundle.masks.stats().density
    assert all(0 < density[lang] < 1 for lang in languages)
    assert set(bundle.lm_paths) == set(languages)
    assert bundle.model.lid_head is not None


@pytest.fixture(scope="module")
def fresh_report(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fresh")
    entries = []
    for lang in bundle.model.languages:
        text = FRESH[lang]
        if lang in SOURCES and SOURCES[lang].available():
            assert text not in set(load_language_text(lang).sentences), (lang, text)
        duration = synthesize_to_wav(text, Voice(lang), root / f"{lang}.wav")
        entries.append(ManifestEntry(f"{lang}.wav", text, lang, duration))
    return evaluate(bundle.model, bundle.vocab, entries, root=root, methods=("greedy",)).to_dict()


def test_fresh_sentences_cover_every_language(bundle: Bundle) -> None:
    assert set(bundle.model.languages) == set(FRESH)


@pytest.mark.parametrize("lang", list(FRESH))
def test_transcribes_an_unseen_sentence(fresh_report: dict[str, Any], lang: str) -> None:
    cer = fresh_report["languages"][lang]["cer"]["greedy"]
    said = [u for u in fresh_report["utterances"] if u["language"] == lang]
    assert cer <= 0.25, (lang, cer, said)


@pytest.mark.slow
def test_manifest_figures_match_our_evaluation(bundle: Bundle, tmp_path: Path) -> None:
    """Rebuild the very test split (seeded per language and split: same clips, same
    manifest bytes) and evaluate the shipped weights as `lass train evaluate` does."""
    data = bundle.manifest["provenance"]["data"]
    config = SyntheticCorpusConfig.from_dict(data["corpus"]["config"])
    assert config.fingerprint() == data["corpus"]["fingerprint"]
    corpus = build_synthetic_corpus(config, tmp_path / "corpus", only=("test",))
    manifest = corpus.manifest("test").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == data["test"]["sha256"]

    figures = bundle.manifest["metrics"]
    settings = figures["settings"]
    torch.manual_seed(0)
    ours = evaluate(
        bundle.model,
        bundle.vocab,
        corpus.test,
        root=corpus.root,
        lm_paths=bundle.lm_paths,
        beam_config=BeamConfig(**settings["beam"]),
        methods=tuple(figures["methods"]),
    ).to_dict()
    # The manifest's figures come from the fp32 weights; the bundle holds them in fp16.
    for metric in ("cer", "wer"):
        for method in figures["methods"]:
            assert ours["average"][metric][method] == pytest.approx(
                figures["average"][metric][method], abs=0.005
            ), (metric, method)
    assert ours["lid_accuracy"] == pytest.approx(figures["lid_accuracy"], abs=0.005)


def test_identifies_the_language_of_unseen_sentences(fresh_report: dict[str, Any]) -> None:
    # 97.7 % on the test split (docs/model-card.md); on these ten the shipped head takes the
    # French sentence for Polish, so one miss is allowed and a second one fails.
    wrong = {
        u["language"]: u["predicted_language"]
        for u in fresh_report["utterances"]
        if u["predicted_language"] != u["language"]
    }
    assert len(wrong) <= 1, wrong
