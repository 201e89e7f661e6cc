"""Progress bars with an ETA for the stages that are not training loops: corpus, lm, evaluate.

The bar draws on stderr; without a terminal (as here) rich prints its final state once,
when the stage ends. ``--quiet`` turns it off, and library calls stay silent by default.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model.train.cli import app
from model.train.data.manifest import ManifestEntry
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from model.train.evaluate import GREEDY, evaluate
from model.vocab import Vocabulary
from tests.conftest import SENTENCES, Utterance
from tests.train.test_evaluate import small_model

TEXT = {
    "en": ["the cat sat on the mat", "good morning to you", "the cat is good"],
    "de": ["guten morgen", "der hund bellt", "der hund ist gut"],
}


def _lm_config(tmp_path: Path) -> Path:
    """A config the lm stage can run on without audio: the corpus text files and vocab.json
    are already in the work folder (as after the corpus stage)."""
    config = tmp_path / "lm.toml"
    config.write_text('name = "t"\nwork_dir = "work"\n[lm]\norder = 2\nbinary = false\n')
    return config


def _work_dir(tmp_path: Path, name: str) -> Path:
    work = tmp_path / name
    (work / "corpus" / "text").mkdir(parents=True)
    for lang, lines in TEXT.items():
        (work / "corpus" / "text" / f"{lang}.txt").write_text("\n".join(lines) + "\n")
    vocab = Vocabulary.build(TEXT)
    (work / "vocab.json").write_text(json.dumps(vocab.to_dict(), ensure_ascii=False))
    return work


def test_lm_stage_shows_a_progress_bar_unless_quiet(tmp_path: Path) -> None:
    config = _lm_config(tmp_path)
    runner = CliRunner()

    work = _work_dir(tmp_path, "loud")
    result = runner.invoke(app, ["lm", str(config), "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (work / "lm").iterdir()) == ["de.arpa", "en.arpa"]
    assert "ETA" in result.stderr
    bar = [line for line in result.stderr.splitlines() if "ETA" in line]
    assert bar and bar[-1].split()[0] == "lm" and "6/6" in bar[-1]  # sentences of both
    assert "ETA" not in result.stdout  # the stage's result (the folder) stays clean

    work = _work_dir(tmp_path, "quiet")
    result = runner.invoke(app, ["lm", str(config), "--work-dir", str(work), "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (work / "lm").iterdir()) == ["de.arpa", "en.arpa"]
    assert result.stderr == ""


def test_evaluate_progress_is_opt_in(
    speech: dict[str, list[Utterance]], capsys: pytest.CaptureFixture[str]
) -> None:
    vocab = Vocabulary.build(SENTENCES)
    model = small_model(vocab)
    entries = [ManifestEntry(str(u.path), u.text, "en", u.duration) for u in speech["en"]]
    evaluate(model, vocab, entries, methods=[GREEDY])
    assert capsys.readouterr().err == ""
    evaluate(model, vocab, entries, methods=[GREEDY], progress=True)
    err = capsys.readouterr().err
    assert "evaluate" in err and "ETA" in err and "seconds of audio" in err


def test_corpus_progress_is_opt_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "en.txt"
    text.write_text("\n".join(TEXT["en"]) + "\n")
    config = SyntheticCorpusConfig(
        high_resource=("en",),
        low_resource=(),
        high_minutes=0.02,  # about one utterance
        dev_sentences=1,
        test_sentences=1,
        text_files={"en": str(text)},
        workers=1,
        augment_prob=0.0,
    )
    build_synthetic_corpus(config, tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    build_synthetic_corpus(config, tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert "corpus" in err and "ETA" in err and "seconds of audio" in err


def test_progress_in_a_log_file_is_not_cut_short(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a terminal rich assumed 80 columns: a comparison's log read
    "20000/16561…" and lost the run's info."""
    from model.train.progress import progress_bar

    bar = progress_bar(False)
    task = bar.add_task("compare", total=1_656_160, info="lass-seed0: adapt done")
    bar.advance(task, 20_000)
    bar.start()
    bar.stop()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "20000/1656160" in line and line.endswith("lass-seed0: adapt done")
