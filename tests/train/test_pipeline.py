"""The CI pipeline: every stage of the lass method from `configs/ci.toml`, then the bundle.

`lass train pipeline` builds the tiny synthetic corpus (3 languages x ~20 utterances),
pre-trains, prunes, adapts, fine-tunes, builds the LMs, evaluates and exports, a few
steps each; the service's bundle reader must accept the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.bundle import read_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ci_pipeline_produces_a_bundle_the_reader_accepts(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lass",
            "train",
            "pipeline",
            "configs/ci.toml",
            "--work-dir",
            str(work),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for stage in ("corpus", "pretrain", "prune", "adapt", "finetune", "lm", "evaluate", "export"):
        assert f"== {stage} ==" in result.stderr, stage

    bundle = read_bundle(work / "bundle")
    assert sorted(bundle.model.languages) == ["de", "en", "es"]
    density = bundle.masks.stats().density
    assert density["en"] == pytest.approx(0.7, abs=0.01)
    assert density["es"] == pytest.approx(0.5, abs=0.01)
    provenance = bundle.manifest["provenance"]
    assert provenance["method"] == "lass"
    assert [s["stage"] for s in provenance["stages"]] == ["pretrain", "adapt", "finetune"]
    assert provenance["trainer"]["commit"]
    assert provenance["config"]["name"] == "lass-ci"
    assert provenance["data"]["train"]["utterances"] > 40
    assert bundle.manifest["metrics"], "evaluation figures missing from the manifest"
    assert set(bundle.lm_paths) == {"de", "en", "es"}

    # The bundle scored on the work folder's split (how a shipped model meets a new corpus):
    # the same utterances and, from fp16 weights, about the same CER as the fp32 model.
    own = (work / "evaluate" / "report.json").read_bytes()
    command = [sys.executable, "-m", "lass", "train", "evaluate", "configs/ci.toml"]
    command += ["--work-dir", str(work), "--quiet"]
    scored = subprocess.run(
        [*command, "--bundle", str(work / "bundle")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert scored.returncode == 0, scored.stderr[-4000:]
    assert (work / "evaluate" / "report.json").read_bytes() == own  # not overwritten
    before = json.loads(own)
    after = json.loads((work / "evaluate-bundle" / "report.json").read_text())
    assert sorted(after["languages"]) == ["de", "en", "es"]
    for lang, row in after["languages"].items():
        assert row["utterances"] == before["languages"][lang]["utterances"]
        assert row["cer"]["greedy"] == pytest.approx(
            before["languages"][lang]["cer"]["greedy"], abs=0.05
        )
    assert set(after["languages"]["en"]["cer"]) == {"greedy", "beam", "beam_lm"}
    both = subprocess.run(
        [
            *command,
            "--bundle",
            str(work / "bundle"),
            "--model",
            str(work / "finetune" / "model.pt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert both.returncode == 2 and "not both" in both.stderr
