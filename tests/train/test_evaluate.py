"""``evaluate``: a real tiny LassModel on espeak-ng speech, and hand-checked scoring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.config import get_preset
from model.network import LassModel
from model.train.data.manifest import ManifestEntry, read_manifest, write_manifest
from model.train.evaluate import (
    BEAM,
    BEAM_LM,
    GREEDY,
    EvalReport,
    UtteranceResult,
    evaluate,
    summarize,
)
from model.train.lm import build_lm
from model.vocab import Vocabulary
from tests.conftest import SENTENCES, Utterance

LANGS = ["de", "en", "es", "it"]


def small_model(vocab: Vocabulary, seed: int = 0) -> LassModel:
    """The ``tiny`` preset shrunk further: 2 layers of 64, no dropout."""
    config = replace(
        get_preset("tiny"),
        encoder_embed_dim=64,
        encoder_num_layers=2,
        encoder_num_heads=4,
        encoder_ff_interm_features=128,
        encoder_dropout=0.0,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_dropout=0.0,
        encoder_projection_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LassModel(config, vocab_size=len(vocab.tokens), languages=LANGS)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build(SENTENCES)


@pytest.fixture
def manifest(speech: dict[str, list[Utterance]], tmp_path: Path) -> Path:
    entries = [
        ManifestEntry(str(u.path), u.text, lang, u.duration)
        for lang, utts in sorted(speech.items())
        for u in utts
    ]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt not really")
    first = speech["en"][0]
    entries += [
        ManifestEntry(str(bad), "the cat", "en", 1.0),
        ManifestEntry(str(first.path), " ?! ", "en", first.duration),
        ManifestEntry(str(first.path), "bonjour", "fr", first.duration),
    ]
    path = tmp_path / "test.jsonl"
    write_manifest(path, entries)
    return path


def test_evaluate_end_to_end_with_lm(vocab: Vocabulary, manifest: Path, tmp_path: Path) -> None:
    model = small_model(vocab)
    model.train()
    lm = build_lm(SENTENCES["en"], tmp_path / "lm" / "en", order=2)
    report = evaluate(model, vocab, manifest, lm_paths={"en": lm}, beam_width=4, batch_size=3)
    assert model.training  # restored
    assert report.methods == [GREEDY, BEAM, BEAM_LM]
    assert sorted(report.languages) == LANGS
    assert report.skipped == {
        "unreadable audio": 1,
        "empty reference": 1,
        "language not in model": 1,
    }
    en = report.languages["en"]
    assert en.utterances == 2 and en.audio_seconds > 1.0
    assert set(en.cer) == {GREEDY, BEAM, BEAM_LM}
    assert set(report.languages["de"].cer) == {GREEDY, BEAM}  # no German LM
    for res in report.languages.values():
        assert all(v >= 0.0 for v in [*res.cer.values(), *res.wer.values()])
        assert res.lid_accuracy is not None
    # LID accuracy agrees with the per-utterance predictions.
    for lang, res in report.languages.items():
        utts = [u for u in report.utterances if u.language == lang]
        assert res.lid_accuracy == sum(u.predicted_language == lang for u in utts) / len(utts)
    assert {u.reference for u in report.utterances if u.language == "en"} == set(SENTENCES["en"])

    # Deterministic: the same call, with entries in another order, gives the same report.
    entries = list(reversed(read_manifest(manifest)))
    again = evaluate(model, vocab, entries, lm_paths={"en": lm}, beam_width=4, batch_size=3)
    assert again.to_dict()["languages"] == report.to_dict()["languages"]

    js = json.loads(report.write_json(tmp_path / "eval.json").read_text())
    assert js["average"]["cer"][GREEDY] == pytest.approx(report.average("cer", GREEDY))
    assert js["languages"]["en"]["cer"][BEAM_LM] == en.cer[BEAM_LM]
    md = report.write_markdown(tmp_path / "eval.md").read_text()
    assert md.splitlines()[0].startswith("| language | utts | audio (s) | CER greedy")
    assert "| **average** | 8 |" in md and "Skipped utterances" in md


def test_all_blank_model_scores_exactly_one(vocab: Vocabulary, manifest: Path) -> None:
    # A CTC head that always says blank: every hypothesis is empty, CER = WER = 100 %.
    model = small_model(vocab)
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.ctc_head.bias.fill_(-10.0)
        model.ctc_head.bias[0] = 10.0
    report = evaluate(model, vocab, manifest, languages=["en", "de"], methods=[GREEDY, BEAM])
    assert sorted(report.languages) == ["de", "en"]
    assert report.methods == [GREEDY, BEAM]  # beam+LM not asked for
    for res in report.languages.values():
        assert res.cer == {GREEDY: 1.0, BEAM: 1.0} and res.wer == {GREEDY: 1.0, BEAM: 1.0}
    assert all(u.hypotheses == {GREEDY: "", BEAM: ""} for u in report.utterances)
    with pytest.raises(ValueError, match="unknown evaluation methods"):
        evaluate(model, vocab, manifest, methods=["viterbi"])


def test_summarize_and_markdown_by_hand() -> None:
    results = [
        UtteranceResult("a.wav", "en", "the cat", {GREEDY: "the bat", BEAM_LM: "the cat"}, "en"),
        UtteranceResult("b.wav", "en", "a dog", {GREEDY: "a dog", BEAM_LM: "a dog"}, "de"),
        UtteranceResult("c.wav", "de", "der hund", {GREEDY: "die hund"}, "de"),
    ]
    langs = summarize(results, [GREEDY, BEAM_LM], {"en"}, {"a.wav": 1.5, "b.wav": 2.0}, True)
    en, de = langs["en"], langs["de"]
    assert en.cer[GREEDY] == pytest.approx(1 / 12)  # one substitution in 7 + 5 characters
    assert en.wer[GREEDY] == pytest.approx(1 / 4)
    assert en.cer[BEAM_LM] == 0.0 and BEAM_LM not in de.cer
    assert de.cer[GREEDY] == pytest.approx(2 / 8) and de.wer[GREEDY] == pytest.approx(1 / 2)
    assert en.lid_accuracy == 0.5 and de.lid_accuracy == 1.0
    assert en.audio_seconds == 3.5
    report = EvalReport(langs, [GREEDY, BEAM_LM], {}, {}, results)
    assert report.average("wer", GREEDY) == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert report.average("cer", BEAM_LM) == 0.0  # only languages with an LM count
    md = report.to_markdown()
    assert "| en | 2 | 3.5 | 8.3 | 0.0 | 25.0 | 0.0 | 50.0 |" in md
    assert "| de | 1 | 0.0 | 25.0 | — | 50.0 | — | 100.0 |" in md
    assert "Skipped" not in md


def test_report_gives_seen_and_unseen_conditions(
    vocab: Vocabulary, speech: dict[str, list[Utterance]], tmp_path: Path
) -> None:
    # Every clip twice: once by a speaker of the training manifest, once by another.
    entries, train = [], []
    for lang in ("de", "en"):
        for u in speech[lang]:
            entries.append(ManifestEntry(str(u.path), u.text, lang, u.duration, f"{lang}+m1"))
            entries.append(ManifestEntry(str(u.path), u.text, lang, u.duration, f"{lang}+Andy"))
        train.append(ManifestEntry(str(speech[lang][0].path), "x", lang, 1.0, f"{lang}+m1"))
    write_manifest(tmp_path / "test.jsonl", entries)
    write_manifest(tmp_path / "train.jsonl", train)  # the training speakers, found beside it
    model = small_model(vocab)
    report = evaluate(model, vocab, tmp_path / "test.jsonl", beam_width=4, batch_size=4)
    assert sorted(report.conditions) == ["seen", "unseen"]
    for condition, speaker in (("seen", "+m1"), ("unseen", "+Andy")):
        langs = report.conditions[condition]
        assert sorted(langs) == ["de", "en"]
        for lang, res in langs.items():
            utts = [u for u in report.utterances if u.condition == condition and u.language == lang]
            assert {u.speaker for u in utts} == {lang + speaker}
            assert res.utterances == len(speech[lang]) and set(res.cer) == {GREEDY, BEAM}
            assert res.lid_accuracy == sum(u.predicted_language == lang for u in utts) / len(utts)
    # The same audio in both conditions: the same figures (the model cannot hear the name).
    assert report.conditions["seen"]["en"].cer == report.conditions["unseen"]["en"].cer
    js = report.to_dict()
    assert js["conditions"]["unseen"]["average"]["cer"][GREEDY] == pytest.approx(
        report.average("cer", GREEDY, "unseen")
    )
    assert js["conditions"]["seen"]["lid_accuracy"] == report.lid_accuracy("seen")
    md = report.to_markdown()
    assert "Condition **seen**:" in md and "Condition **unseen**:" in md
    assert md.count("| **average** |") == 3

    # Without training speakers (no train.jsonl, none passed) there are no conditions.
    entries_only = read_manifest(tmp_path / "test.jsonl")
    plain = evaluate(model, vocab, entries_only, root=tmp_path / "elsewhere", beam_width=4)
    assert plain.conditions == {} and "conditions" not in plain.settings
    assert plain.to_dict()["conditions"] == {} and "Condition" not in plain.to_markdown()
    # Speakers passed in: every clip's speaker is a training one, nothing unseen to show.
    both = evaluate(
        model, vocab, entries_only, seen_speakers={"de+m1", "de+Andy", "en+m1", "en+Andy"}
    )
    assert both.conditions == {} and {u.condition for u in both.utterances} == {"seen"}
