"""The committed comparison report (docs/paper-comparison/report/) is what the committed
kept results give: nobody edits a figure by hand, and a kept result committed without its
report (or a report left behind by a change to the code that writes it) fails here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from model.train.compare import load_compare_config, report_kept
from tests.conftest import REPO

COMMITTED = REPO / "docs" / "paper-comparison" / "report"


def test_the_committed_report_is_what_the_kept_results_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the report names its config relative to the current folder
    cfg, ccfg = load_compare_config(REPO / "configs" / "compare.toml")
    report_kept(cfg, ccfg, tmp_path)
    assert (tmp_path / "compare.md").read_text() == (COMMITTED / "compare.md").read_text(), (
        "regenerate it: lass train compare configs/compare.toml --report-to "
        "docs/paper-comparison/report"
    )
    fresh = json.loads((tmp_path / "compare.json").read_text())
    assert fresh == json.loads((COMMITTED / "compare.json").read_text())
    for figure in fresh["figures"].values():
        # Pixels, not bytes: another build of the font renderer may move an edge.
        ours, theirs = imread(tmp_path / figure), imread(COMMITTED / figure)
        assert ours.shape == theirs.shape, figure
        assert float(np.abs(ours - theirs).mean()) < 0.01, figure
