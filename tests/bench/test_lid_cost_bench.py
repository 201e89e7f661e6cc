"""The LID-cost benchmark runs on the default bundle and ends with its JSON line."""

from __future__ import annotations

import json

import pytest

from bench.lid_cost import main


def test_times_asr_and_both_lid_heads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seconds", "0.5", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bundle_lid_input"] == "encoder"
    assert set(result["median_ms"]) == {"asr", "lid_encoder", "lid_features"}
    assert all(ms > 0 for ms in result["median_ms"].values())
    assert lines[0].startswith("asr: ")
