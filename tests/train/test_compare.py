"""``lass train compare``: the four methods and the sparsity ablation on a micro corpus.

End to end through the CLI on the micro model of ``stage_helpers`` (seconds, not a real
result): the report's structure, one shared pre-training, parameter counts that follow
from each method, and resume (finished runs are skipped, a changed config is refused).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from model.train.cli import app
from model.train.compare import (
    KEPT_SHARED,
    CompareConfig,
    Groups,
    RunSpec,
    StageTimer,
    _add_time,
    _run_stages,
    finished_stages,
    load_compare_config,
    plan_runs,
    served,
    spread,
    stage_cost,
)
from model.train.config import PipelineConfig
from tests.conftest import REPO
from tests.train.stage_helpers import MICRO_MODEL, MICRO_STAGES, micro_corpus  # noqa: F401

COMPARE = """
[compare]
methods = ["lass", "dense", "dense_adapt", "adapters"]
seeds = [0, 1]
high_resource = ["en", "de"]
low_resource = ["es"]
low_sparsity = [0.5, 0.7, 0.9]   # 0.7 is the micro config's own sparsity for es
ablation_seeds = [0]
served_languages = [100]
keep_results = "kept"   # beside the config file
"""


def _config(tmp_path: Path, corpus: Path) -> Path:
    text = (
        'name = "micro-compare"\nmethod = "lass"\nwork_dir = "work"\n'
        f'[data]\ntrain = "{corpus / "train.jsonl"}"\ndev = "{corpus / "dev.jsonl"}"\n'
        f'test = "{corpus / "dev.jsonl"}"\n' + MICRO_MODEL + MICRO_STAGES + COMPARE
    )
    path = tmp_path / "compare.toml"
    path.write_text(text)
    return path


def test_plan_shares_the_main_lass_run_with_the_ablation(
    tmp_path: Path,
    micro_corpus: Path,  # noqa: F811
) -> None:
    cfg, ccfg = load_compare_config(_config(tmp_path, micro_corpus))
    runs, ablation = plan_runs(cfg, ccfg, Groups(("en", "de"), ("es",)))
    names = [r.name for r in runs]
    assert names[:8] == [
        f"{m}-seed{s}" for s in (0, 1) for m in ("lass", "dense", "dense_adapt", "adapters")
    ]
    assert names[8:] == ["lass-low0.5-seed0", "lass-low0.9-seed0"]
    assert ablation[0.7] == [RunSpec("lass", 0)]  # the config's own value: the main run
    # --methods without lass: no ablation
    no_lass = CompareConfig(methods=["dense"], seeds=[0], low_sparsity=[0.5])
    assert plan_runs(cfg, no_lass, Groups(("en",), ("es",))) == ([RunSpec("dense", 0)], {})


def test_spread_and_served_arithmetic() -> None:
    assert spread([0.1, 0.3]) == pytest.approx(
        {"mean": 0.2, "min": 0.1, "max": 0.3, "std": 0.1414, "n": 2}, abs=1e-4
    )
    assert spread([0.25])["std"] == 0.0
    params = {
        "model": 1000,
        "bytes_per_weight": 2,
        "languages": {
            "a": {"stored_parameters": 10, "stored_mask_bits": 800},
            "b": {"stored_parameters": 10, "stored_mask_bits": 800},
        },
    }
    # 1000 + 3 x 10 weights at 2 bytes, plus 3 masks of 100 bytes
    assert served(params, 3) == (1030, 1030 * 2 + 300)


def test_the_eta_counts_the_audio_a_batch_really_holds() -> None:
    """80-s batches of at most 16 clips of 3 s hold 48 s: the ETA counts 48, not 80."""
    cfg = PipelineConfig()
    cfg.finetune.steps, cfg.finetune.batch_seconds, cfg.finetune.max_batch_size = 100, 80.0, 16
    cfg.model.lid_head = False
    assert stage_cost(cfg, "finetune", 6, 0.0, clip_seconds=3.0) == pytest.approx(4800.0)
    assert stage_cost(cfg, "finetune", 6, 0.0, clip_seconds=6.0) == pytest.approx(8000.0)
    assert stage_cost(cfg, "finetune", 6, 0.0) == pytest.approx(8000.0)  # unknown clip length
    cfg.method = "dense"
    assert stage_cost(cfg, "prune", 6, 0.0, clip_seconds=3.0) == 0.0  # dense prunes nothing


def test_compare_end_to_end_with_resume(tmp_path: Path, micro_corpus: Path) -> None:  # noqa: F811
    config = _config(tmp_path, micro_corpus)
    work = tmp_path / "work"
    runner = CliRunner()
    base = ["compare", str(config), "--work-dir", str(work)]

    # One run first: a partial comparison of its own plan.
    first = runner.invoke(app, [*base, "--methods", "dense", "--seeds", "0"])
    assert first.exit_code == 0, first.output
    partial = json.loads((work / "compare.json").read_text())
    assert partial["status"] == {"planned": 1, "done": 1, "complete": True, "missing": []}
    dense0 = work / "runs" / "dense-seed0"
    stamps = {p: p.stat().st_mtime_ns for p in (dense0 / "result.json", dense0 / "finetune")}
    pretrained = work / "shared" / "pretrain" / "model.pt"
    pretrained_at = pretrained.stat().st_mtime_ns
    shared_time = (work / "shared" / "timing.json").read_text()

    full = runner.invoke(app, base)
    assert full.exit_code == 0, full.output
    # Finished shared stages only find their outputs again: their kept times do not grow.
    assert (work / "shared" / "timing.json").read_text() == shared_time
    assert "dense-seed0 is done, skipped" in full.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert pretrained.stat().st_mtime_ns == pretrained_at  # pre-trained once
    assert "ETA" in full.stderr and "compare" in full.stderr
    report = json.loads((work / "compare.json").read_text())
    assert report["status"]["complete"] and report["status"]["planned"] == 10
    assert report["groups"] == {"high": ["en", "de"], "low": ["es"]}
    for name in report["runs"]:  # every run fine-tuned the same pre-trained weights
        linked = work / "runs" / name / "pretrain" / "model.pt"
        assert linked.resolve() == pretrained.resolve()

    methods = report["methods"]
    assert list(methods) == ["lass", "dense", "dense_adapt", "adapters"]
    for m in methods.values():
        assert m["seeds"] == [0, 1]
        for decoding in ("greedy", "beam", "beam_lm"):
            groups = m["cer"][decoding]["groups"]
            for group in ("high", "low", "all"):
                stats = groups[group]
                assert stats["n"] == 2
                assert stats["min"] <= stats["mean"] <= stats["max"]
            assert set(m["cer"][decoding]["languages"]) == {"de", "en", "es"}
        assert m["time_s"]["finetune"]["mean"] > 0
    assert methods["lass"]["time_s"]["prune"]["mean"] > 0
    assert "prune" not in methods["dense"]["time_s"]
    # The "all" group is the mean of the languages; "low" is es alone.
    run = report["runs"]["dense-seed0"]["evaluation"]["languages"]
    low = methods["dense"]["cer"]["greedy"]["groups"]["low"]
    assert low["min"] <= run["es"]["cer"]["greedy"] <= low["max"]

    p = {k: v["parameters"] for k, v in methods.items()}
    dense_trained = p["dense"]["trained_per_language"]
    assert dense_trained["min"] == dense_trained["max"]  # every language trains everything
    assert p["dense_adapt"]["trained_per_language"] == dense_trained
    assert p["dense"]["stored_per_language"] == {"parameters": 0, "mask_bits": 0}
    # lass: es keeps 30 % of the prunable weights, en and de 50 %: es trains fewer
    lass_langs = report["runs"]["lass-seed0"]["parameters"]["languages"]
    assert lass_langs["es"]["trained"] < lass_langs["en"]["trained"] < dense_trained["max"]
    prunable = report["runs"]["lass-seed0"]["parameters"]["prunable"]
    assert p["lass"]["stored_per_language"] == {"parameters": 0, "mask_bits": prunable}
    adapters = p["adapters"]
    assert 0 < adapters["trained_per_language"]["max"] < lass_langs["es"]["trained"]
    assert adapters["stored_per_language"]["parameters"] > 0
    for n in ("3", "100"):
        dense_bytes = p["dense"]["served"][n]["bytes"]
        assert p["lass"]["served"][n]["bytes"] == dense_bytes + int(n) * prunable // 8
        assert p["adapters"]["served"][n]["parameters"] > p["dense"]["served"][n]["parameters"]

    masks = methods["lass"]["masks"]
    assert masks["density"]["es"]["mean"] == pytest.approx(0.3, abs=0.01)
    assert masks["density"]["en"]["mean"] == pytest.approx(0.5, abs=0.01)
    assert masks["jaccard"]["en"]["en"] == 1.0 and 0 < masks["jaccard"]["en"]["es"] < 1
    heat_map = work / report["figures"]["lass-seed0"]
    assert heat_map.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ablation = {row["low_sparsity"]: row for row in report["ablation"]}
    assert sorted(ablation) == [0.5, 0.7, 0.9]
    assert ablation[0.7]["runs"] == ["lass-seed0"]
    for value, row in ablation.items():
        assert row["seeds"] == [0]
        assert row["low_density"] == pytest.approx(1 - value, abs=0.01)
    trained = [ablation[v]["trained_per_low_language"] for v in (0.5, 0.7, 0.9)]
    assert trained == sorted(trained, reverse=True)

    md = (work / "compare.md").read_text()
    assert "All 10 runs done." in md
    for heading in (
        "## CER by language group",
        "## CER per language, greedy",
        "## CER per language, beam + LM",
        "## Parameters",
        "## Training time",
        "## lass: the sub-networks",
        "## Ablation",
    ):
        assert heading in md, heading
    assert f"]({report['figures']['lass-seed0']})" in md

    # The report again from the kept results alone, training nothing: the very same report
    # (what a clone of the repository checks the committed one against).
    out = tmp_path / "report"
    from_kept = runner.invoke(app, ["compare", str(config), "--report-to", str(out)])
    assert from_kept.exit_code == 0, from_kept.output
    assert (out / "compare.md").read_text() == md
    assert json.loads((out / "compare.json").read_text()) == report
    assert (out / report["figures"]["lass-seed0"]).stat().st_size > 0

    # A third call finds everything done and trains nothing.
    results = {p: p.stat().st_mtime_ns for p in work.glob("runs/*/result.json")}
    again = runner.invoke(app, base)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in results} == results
    assert again.stderr.count("is done, skipped") == 10

    # The same work folder under another budget would mix two experiments: refused.
    changed = runner.invoke(app, [*base, "--set", "finetune.steps=4"])
    assert changed.exit_code == 2
    assert "another config" in changed.stderr

    # Every run records the digest of the shared stages it started from ...
    digests = {json.dumps(r["shared"], sort_keys=True) for r in report["runs"].values()}
    assert len(digests) == 1
    start = json.loads(digests.pop())
    assert set(start) == {"manifests", "pretrain", "lm"}
    assert report["shared"] == start
    assert f"pretrain `{start['pretrain'][:12]}`" in (work / "compare.md").read_text()
    # ... and the comparison is reproducible: another work folder pre-trains the very same
    # weights and fine-tunes and scores a run exactly alike (no unseeded randomness).
    unkept = tmp_path / "unkept.toml"  # kept results would be restored, not re-run
    unkept.write_text(config.read_text().replace('keep_results = "kept"', ""))
    elsewhere = ["--work-dir", str(tmp_path / "again"), "--methods", "dense", "--seeds", "0"]
    other = runner.invoke(app, ["compare", str(unkept), *elsewhere])
    assert other.exit_code == 0, other.output
    redo = json.loads((tmp_path / "again" / "runs" / "dense-seed0" / "result.json").read_text())
    assert redo["shared"] == start
    assert redo["evaluation"] == report["runs"]["dense-seed0"]["evaluation"]

    # A work folder lost: the shared stages are rebuilt identically and every kept result
    # is taken back; nothing is trained again.
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == sorted([KEPT_SHARED, *(f"{name}.json" for name in report["runs"])])
    shutil.rmtree(work)
    restored = runner.invoke(app, base)
    assert restored.exit_code == 0, restored.output
    assert restored.stderr.count("restored from") == 10
    assert not list(work.glob("runs/*/finetune"))
    assert json.loads((work / "compare.json").read_text())["runs"] == report["runs"]

    # A finished run from other shared stages than the work folder's is refused, whether
    # it is in the work folder or kept.
    path = work / "runs" / "dense-seed0" / "result.json"
    result = json.loads(path.read_text())
    result["shared"]["pretrain"] = "0" * 64
    path.write_text(json.dumps(result))
    refused = runner.invoke(app, base)
    assert refused.exit_code == 2
    assert "other shared stages" in refused.stderr and "['pretrain']" in refused.stderr
    shutil.rmtree(work / "runs" / "dense-seed0")
    (tmp_path / "kept" / "dense-seed0.json").write_text(json.dumps(result))
    refused = runner.invoke(app, base)
    assert refused.exit_code == 2
    assert "dense-seed0.json was made from other shared stages" in refused.stderr


def test_a_new_fine_tuning_budget_reuses_the_shared_folder(tmp_path: Path) -> None:
    """The shared stages depend on the model, data, pre-training and LMs only."""
    import copy

    from model.train.compare import SHARED_KEYS, _check_same_config, load_compare_config
    from model.train.context import StageError

    cfg, _ = load_compare_config(REPO / "configs" / "compare.toml")
    _check_same_config(tmp_path, cfg, SHARED_KEYS)  # writes config.json
    longer = copy.deepcopy(cfg)
    longer.finetune.steps += 1000
    _check_same_config(tmp_path, longer, SHARED_KEYS)
    with pytest.raises(StageError, match="finetune"):
        _check_same_config(tmp_path, longer)  # a run folder compares everything
    other = copy.deepcopy(cfg)
    other.pretrain.steps += 1
    with pytest.raises(StageError, match="pretrain"):
        _check_same_config(tmp_path, other, SHARED_KEYS)


def test_stopped_time_is_kept_apart_from_the_stage_time(tmp_path: Path) -> None:
    _add_time(tmp_path, "finetune", 100.0)
    timing = _add_time(tmp_path, "finetune", 50.0, stopped=600.0)
    assert timing == {"finetune": 150.0}
    assert json.loads((tmp_path / "stopped.json").read_text()) == {"finetune": 600.0}


def test_stage_timer_keeps_time_while_the_stage_runs(tmp_path: Path) -> None:
    """A heartbeat writes the stage's time as it runs, so a killed call keeps what it spent;
    only a stage that returns is finished, and a resumed one adds to what was kept."""
    with pytest.raises(KeyboardInterrupt), StageTimer(tmp_path, "finetune", every=0.1):
        time.sleep(0.35)
        during = json.loads((tmp_path / "timing.json").read_text())["finetune"]
        assert 0.1 <= during <= 0.35  # written before the stage ended
        raise KeyboardInterrupt  # the call is interrupted: its time stays, unfinished
    first = json.loads((tmp_path / "timing.json").read_text())["finetune"]
    assert first >= 0.33  # each flush rounds to 0.01 s
    assert finished_stages(tmp_path) == []
    with StageTimer(tmp_path, "finetune", every=0.1):
        time.sleep(0.2)
    assert json.loads((tmp_path / "timing.json").read_text())["finetune"] >= first + 0.18
    assert finished_stages(tmp_path) == ["finetune"]


def test_a_folder_from_before_finished_json_counts_its_timed_stages_finished(
    tmp_path: Path,
) -> None:
    """The old writer timed a stage only at its end: the stages in its timing.json are done."""
    _add_time(tmp_path, "prune", 10.0)
    assert finished_stages(tmp_path) == ["prune"]
    with StageTimer(tmp_path, "adapt", every=0.05):
        time.sleep(0.12)  # the heartbeat's entry for adapt does not make it finished early
        assert finished_stages(tmp_path) == ["prune"]
    assert finished_stages(tmp_path) == ["prune", "adapt"]


def test_a_finished_stage_is_not_timed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed comparison runs every stage again, and a finished one only finds its
    output: that check must not add to the stage's kept time."""
    calls: list[str] = []

    def runner(ctx: object) -> None:
        calls.append("finetune")
        time.sleep(0.05)

    monkeypatch.setattr("model.train.pipeline.stage_runners", lambda: {"finetune": runner})
    ctx = SimpleNamespace(cfg=PipelineConfig(method="dense"), work_dir=tmp_path, echo=print)
    first = _run_stages(ctx, ["finetune"])  # type: ignore[arg-type]
    again = _run_stages(ctx, ["finetune"])  # type: ignore[arg-type]
    assert calls == ["finetune", "finetune"]
    assert first["finetune"] >= 0.05 and again == first
