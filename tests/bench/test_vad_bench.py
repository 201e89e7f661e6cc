"""bench/vad.py runs end to end on a few seconds of speech and reports every figure."""

from __future__ import annotations

import json

import pytest

from bench.vad import main


def test_vad_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--minutes", "0.2", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("load_s", "sequential_s_per_min", "batched_s_per_min", "plan_s_per_min"):
        assert result[key] > 0
    assert 0 <= result["frames_differing"] < 0.05
    assert result["pieces"] == 1  # 12 s fits one 30 s piece
