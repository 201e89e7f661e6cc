"""bench/stream.py end to end on a tiny bundle: one policy, one stream, one JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.stream import SENTENCES, main
from tests.service.conftest import make_bundle


@pytest.mark.slow
def test_bench_stream_reports_latencies_and_cer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = {lang: SENTENCES[lang] for lang in ("de", "en")}
    bundle = make_bundle(tmp_path / "b", ["de", "en"], texts)
    args = ["--bundle", str(bundle), "--streams", "2", "--policies", "mixed"]
    assert main([*args, "--workdir", str(tmp_path / "w")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    row = summary["policies"]["mixed"]["2"]
    assert row["finals"] == row["expected_finals"] == 4  # two sentences per stream
    assert row["errors"] == 0
    assert 0 < row["partial_p50"] <= row["partial_p95"]
    assert row["final_after_speech_p95"] > 0
    assert row["stream_cer"] > 0 and row["rest_cer"] > 0  # random weights: not a real result
    assert summary["config"]["languages"] == ["de", "en"]
    assert set(summary["held"]) == {"mixed"}
