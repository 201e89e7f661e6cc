"""The TTS engines behind one interface, the v2 corpus config's voices, and the held-out
split: every engine gives 16 kHz float32 mono, held-out voices never speak a training clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.train.data.manifest import read_manifest
from model.train.data.synthesizers import (
    ESPEAK,
    FESTIVAL,
    FLITE,
    SYNTHESIZERS,
    SynthesisError,
    SynthVoice,
    can_speak,
    espeak_variants,
    synthesize,
)
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from model.train.evaluate import training_speakers

REPO = Path(__file__).resolve().parents[2]
V2 = REPO / "configs" / "corpus" / "default-v2.toml"

TEXT = {
    "en": "the quick brown fox jumps over the lazy dog",
    "it": "la città è più bella di notte",
    "cs": "příliš žluťoučký kůň úpěl ďábelské ódy",
    "ru": "съешь же ещё этих мягких булок",
}
# One voice per (engine, language) it has, plus the voices recorded at another rate than
# 16 kHz (flite kal 8 kHz, czech_dita 32 kHz, czech_ph 44.1 kHz, slt HTS 32 kHz).
CASES = [
    (ESPEAK, "en+m3", "en"),
    (ESPEAK, "ru+Andy", "ru"),
    (FLITE, "kal", "en"),
    (FLITE, "slt", "en"),
    (FESTIVAL, "kal_diphone", "en"),
    (FESTIVAL, "cmu_us_slt_arctic_hts", "en"),
    (FESTIVAL, "lp_diphone", "it"),
    (FESTIVAL, "czech_dita", "cs"),
    (FESTIVAL, "czech_ph", "cs"),
    (FESTIVAL, "msu_ru_nsh_clunits", "ru"),
]


@pytest.mark.parametrize(("engine", "name", "lang"), CASES)
def test_every_engine_speaks_16k_float32_mono(engine: str, name: str, lang: str) -> None:
    assert name.split("+")[0] == lang or name in SYNTHESIZERS[engine].voices()
    audio = synthesize(TEXT[lang], SynthVoice(engine, name, rate=160, pitch=60))
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = audio.size / 16_000
    # Six or seven words: a speaking rate between 1 and 6 words a second at 16 kHz (a voice
    # read at its native rate as 16 kHz would be off by 2-3x).
    assert 1.0 < seconds < 7.0, seconds
    assert 0.05 < float(np.abs(audio).max()) <= 0.99 + 1e-6
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    assert rms > 0.005  # speech, not silence


def test_rate_stretches_the_other_engines() -> None:
    slow = synthesize(TEXT["en"], SynthVoice(FLITE, "awb", rate=110))
    fast = synthesize(TEXT["en"], SynthVoice(FLITE, "awb", rate=240))
    assert slow.size > 1.6 * fast.size
    slow = synthesize(TEXT["en"], SynthVoice(FESTIVAL, "ked_diphone", rate=110))
    fast = synthesize(TEXT["en"], SynthVoice(FESTIVAL, "ked_diphone", rate=240))
    assert slow.size > 1.6 * fast.size


def test_unknown_voices_and_letters() -> None:
    with pytest.raises(SynthesisError, match="unknown voice"):
        synthesize("hello", SynthVoice(FESTIVAL, "nobody"))
    with pytest.raises(SynthesisError, match="unknown synthesizer"):
        synthesize("hello", SynthVoice("sam", "x"))
    # festival's Latin-1 voices cannot take Cyrillic; the corpus falls back to espeak-ng
    assert not can_speak(SynthVoice(FESTIVAL, "kal_diphone"), TEXT["ru"])
    assert can_speak(SynthVoice(FESTIVAL, "czech_dita"), TEXT["cs"])
    assert not can_speak(SynthVoice(FESTIVAL, "lp_diphone"), TEXT["cs"])
    assert can_speak(SynthVoice(ESPEAK, "ru"), TEXT["ru"])


def test_v2_config_uses_every_espeak_variant_once() -> None:
    config = SyntheticCorpusConfig.from_toml(V2)
    trained = set(config.variants) - {""}
    held = set(config.heldout_variants)
    assert not trained & held
    assert trained | held == set(espeak_variants())
    # every other engine's voice is installed (the Makefile's TEST_APT)
    for table in (config.synthesizers, config.heldout_voices):
        for engines in table.values():
            for engine, names in engines.items():
                if engine != ESPEAK:
                    assert set(names) <= set(SYNTHESIZERS[engine].voices()), (engine, names)
    # training and held-out voices of every language never meet
    for lang in config.languages:
        train = {v.speaker for v in config.train_voices(lang)}
        unseen = {v.speaker for pool in config.heldout_pool(lang) for v in pool}
        assert unseen and not train & unseen, lang
    # v1's config keeps its dictionary and fingerprint (v1 bundles record it)
    v1 = SyntheticCorpusConfig.from_toml(REPO / "configs" / "corpus" / "default.toml")
    assert "heldout_variants" not in v1.to_dict() and "codecs" not in v1.to_dict()["augment"]
    assert v1.fingerprint() == "232853236db0a2dc"


def test_held_out_voices_cannot_be_trained_on() -> None:
    with pytest.raises(ValueError, match="both trained on and held out"):
        SyntheticCorpusConfig(variants=("", "m1"), heldout_variants=("m1",))
    with pytest.raises(ValueError, match="both trained on and held out"):
        SyntheticCorpusConfig(
            synthesizers={"en": {FLITE: ("slt",)}}, heldout_voices={"en": {FLITE: ("slt",)}}
        )
    with pytest.raises(ValueError, match="not festival voices for de"):
        SyntheticCorpusConfig(synthesizers={"de": {FESTIVAL: ("kal_diphone",)}})
    with pytest.raises(ValueError, match="heldout_variants"):
        SyntheticCorpusConfig(heldout_voices={"en": {ESPEAK: ("en-us",)}})


def test_held_out_split_is_disjoint(tmp_path: Path) -> None:
    texts = {
        "en": ["the cat sat on the mat", "good morning to you all", "where is the old station",
               "she sells sea shells", "a cup of hot tea please", "the rain falls on the plain"],
        "it": ["la casa è molto grande", "il cane mangia il pane", "andiamo al mare domani",
               "il sole splende sempre", "la città è più bella", "buona sera a tutti voi"],
    }  # fmt: skip
    files = {}
    for lang, lines in texts.items():
        files[lang] = str(tmp_path / f"{lang}.txt")
        Path(files[lang]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = SyntheticCorpusConfig(
        high_resource=("en",),
        low_resource=("it",),
        high_minutes=0.2,
        low_minutes=0.1,
        dev_sentences=1,
        test_sentences=2,
        text_files=files,
        variants=("", "m1", "f2"),
        heldout_variants=("m3", "Andy"),
        synthesizers={"en": {FESTIVAL: ("ked_diphone",)}, "it": {FESTIVAL: ("lp_diphone",)}},
        synthesizer_share=0.5,
        heldout_voices={"en": {FLITE: ("kal16", "awb")}, "it": {FESTIVAL: ("pc_diphone",)}},
        workers=1,
        chunk=4,
        seed=3,
    )
    corpus = build_synthetic_corpus(config, tmp_path / "corpus")
    train_speakers = {e.speaker for e in corpus.train}
    assert any(s and s.startswith("festival:") for s in train_speakers)  # the share is used
    assert training_speakers(corpus.root) == train_speakers
    for lang in texts:
        allowed = {v.speaker for v in config.train_voices(lang)}
        held = {v.speaker for pool in config.heldout_pool(lang) for v in pool}
        lang_train = {e.speaker for e in corpus.train if e.language == lang}
        assert lang_train <= allowed and not lang_train & held
        assert {e.speaker for e in corpus.dev if e.language == lang} <= allowed
        test = [e for e in corpus.test if e.language == lang]
        # each test sentence twice: a training voice first, then a held-out one
        seen, unseen = test[:2], test[2:]
        assert [e.text for e in seen] == [e.text for e in unseen] and len(unseen) == 2
        assert {e.speaker for e in seen} <= allowed
        assert {e.speaker for e in unseen} <= held
        info = corpus.summary["languages"][lang]["conditions"]
        assert info["unseen"]["speakers"] == sorted({e.speaker or "" for e in unseen})
    assert read_manifest(corpus.manifest("test")) == corpus.test
