"""What the trainer writes names files relative to its work folder, never absolutely: a
bundle must not depend on (or reveal) the folder or machine that trained it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.bundle import read_bundle
from model.train.config import load_config
from model.train.context import Context
from model.train.export import run_export
from model.train.finetune import run_finetune
from model.train.paths import REPO, recorded_path
from model.train.tasks import run_evaluate, run_lm
from tests.train.stage_helpers import MICRO_MODEL, MICRO_STAGES, micro_corpus  # noqa: F401


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_recorded_path_is_never_absolute(tmp_path: Path) -> None:
    work = tmp_path / "runs" / "one"
    assert recorded_path(work / "corpus" / "test.jsonl", work) == "corpus/test.jsonl"
    assert recorded_path(REPO / "configs" / "default.toml", work) == "configs/default.toml"
    assert recorded_path(tmp_path / "data" / "a.jsonl", work) == "../../data/a.jsonl"
    # A work folder inside the repository still names its own files relative to itself.
    assert recorded_path(REPO / "runs" / "ci" / "lm" / "en.arpa", REPO / "runs" / "ci") == (
        "lm/en.arpa"
    )


def test_the_trainer_records_relative_names(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    work = tmp_path / "work"
    # No [data] manifests: the stages read the corpus in the work folder, as after `corpus`.
    shutil.copytree(micro_corpus, work / "corpus")
    config = tmp_path / "micro.toml"
    config.write_text('name = "micro"\nmethod = "dense"\n' + MICRO_MODEL + MICRO_STAGES)
    cfg = load_config(config)
    cfg.finetune.steps = 1
    cfg.finetune.lid_steps = 1
    ctx = Context.create(cfg, work, quiet=True)
    run_finetune(ctx)
    run_lm(ctx)
    run_evaluate(ctx)
    manifest = read_bundle(run_export(ctx)).manifest

    absolute = [s for s in _strings(manifest) if s.startswith("/") or str(tmp_path) in s]
    assert not absolute, absolute[:5]
    provenance = manifest["provenance"]
    assert provenance["data"]["train"]["manifest"] == "corpus/train.jsonl"
    assert provenance["data"]["dev"]["manifest"] == "corpus/dev.jsonl"
    assert provenance["config"]["source"] == "../micro.toml"
    metrics = manifest["metrics"]
    lms = metrics["settings"]["lm"]
    assert sorted(lms) == ["de", "en", "es"]
    assert all(name.startswith("lm/") and (work / name).is_file() for name in lms.values())
    audio = [u["audio"] for u in metrics["utterances"]]
    assert len(audio) == 6
    assert all(name.startswith("corpus/") and (work / name).is_file() for name in audio)
    # Per-language durations are looked up by these names: a miss would make them 0.
    assert all(r["audio_seconds"] > 0 for r in metrics["languages"].values())
