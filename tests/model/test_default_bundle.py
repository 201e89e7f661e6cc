"""The embedded default model (model/default_bundle): it loads, it transcribes sentences it
never saw in each of its languages, and the figures in its manifest are what our own
evaluation gives on the held-out synthetic test split of every language whose data can be
rebuilt."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from model.bundle import Bundle, read_bundle
from model.decoding import BeamConfig
from model.train.data.espeak import Voice, synthesize_to_wav
from model.train.data.manifest import ManifestEntry
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from model.train.data.text_sources import SOURCES, load_language_text, pool_sha256
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


# Languages whose v1 test split cannot be rebuilt: their sentence pool read every page in
# shared man-page folders, other packages' pages included (docs/model-card.md). The
# manifest says so per language; this set must not grow unnoticed.
NOT_REBUILDABLE = {"en", "fr", "nl"}


def _check_recorded_data(lang: str, source: dict[str, Any]) -> None:
    """The language's Debian packages and sentence pool are the ones the manifest records."""
    installed = SOURCES[lang].package_versions()
    changed = {
        package: f"recorded {version}, installed {installed.get(package)}"
        for package, version in source["package_versions"].items()
        if installed.get(package) != version
    }
    assert not changed, (
        f"{lang}: the data changed: {changed}; another package version may hold other "
        "sentences, so the seeded test split and its figures need not match any more"
    )
    sentences = load_language_text(lang).sentences
    assert pool_sha256(sentences) == source["pool_sha256"], (
        f"{lang}: the data changed: the sentence pool differs ({len(sentences)} sentences, "
        f"recorded {source['sentences_available']}) with the recorded package versions, "
        "so the text sources or the cleaning rules changed"
    )


@pytest.mark.slow
def test_manifest_figures_match_our_evaluation(bundle: Bundle, tmp_path: Path) -> None:
    """Rebuild the test split of every language whose data can be rebuilt (seeded per
    language and split: same sentences, same clips) and evaluate the shipped weights on it
    as `lass train evaluate` does: each language's figures are the manifest's."""
    data = bundle.manifest["provenance"]["data"]
    recorded = {lang: info["source"] for lang, info in data["corpus"]["languages"].items()}
    assert {lang for lang, s in recorded.items() if not s["rebuildable"]} == NOT_REBUILDABLE
    rebuildable = sorted(set(recorded) - NOT_REBUILDABLE)
    for lang in rebuildable:
        _check_recorded_data(lang, recorded[lang])

    full = SyntheticCorpusConfig.from_dict(data["corpus"]["config"])
    assert full.fingerprint() == data["corpus"]["fingerprint"]
    # Sentences, voices and seeds are drawn per language: dropping languages keeps the rest.
    config = dataclasses.replace(
        full,
        high_resource=tuple(lang for lang in full.high_resource if lang in rebuildable),
        low_resource=tuple(lang for lang in full.low_resource if lang in rebuildable),
    )
    corpus = build_synthetic_corpus(config, tmp_path / "corpus", only=("test",))

    figures = bundle.manifest["metrics"]
    # The manifest names each clip relative to the training work folder.
    clips = {u["audio"]: u["reference"] for u in figures["utterances"]}
    for entry in corpus.test:
        assert clips.get(f"corpus/{entry.audio}") == bundle.vocab.normalize(
            entry.text, entry.language
        ), entry
    for lang in rebuildable:
        mine = [e for e in corpus.test if e.language == lang]
        wanted = figures["languages"][lang]
        assert len(mine) == wanted["utterances"], lang
        seconds = sum(e.duration for e in mine)
        assert seconds == pytest.approx(wanted["audio_seconds"], abs=1e-3), (
            f"{lang}: espeak-ng spoke the same sentences differently ({seconds:.3f} s of audio, "
            f"recorded {wanted['audio_seconds']:.3f} s): the audio changed"
        )

    settings = figures["settings"]
    torch.manual_seed(0)
    ours = evaluate(
        bundle.model,
        bundle.vocab,
        corpus.test,
        root=corpus.root,
        lm_paths=bundle.lm_paths,
        beam_config=BeamConfig(**settings["beam"]),
        batch_size=settings["batch_size"],
        methods=tuple(figures["methods"]),
    ).to_dict()
    assert sorted(ours["languages"]) == rebuildable
    # The manifest's figures come from the fp32 weights; the bundle holds them in fp16.
    for lang in rebuildable:
        mine, wanted = ours["languages"][lang], figures["languages"][lang]
        for method in figures["methods"]:
            assert mine["cer"][method] == pytest.approx(wanted["cer"][method], abs=0.005), (
                lang,
                method,
            )
        assert mine["lid_accuracy"] == pytest.approx(wanted["lid_accuracy"], abs=0.005), lang


def test_identifies_the_language_of_unseen_sentences(fresh_report: dict[str, Any]) -> None:
    # 97.7 % on the test split (docs/model-card.md); on these ten the shipped head takes the
    # French sentence for Polish, so one miss is allowed and a second one fails.
    wrong = {
        u["language"]: u["predicted_language"]
        for u in fresh_report["utterances"]
        if u["predicted_language"] != u["language"]
    }
    assert len(wrong) <= 1, wrong
