"""bench.audio_io runs end to end and reports every figure (tiny settings)."""

from __future__ import annotations

import json

import pytest

from bench.audio_io import FORMATS, main


def test_audio_io_bench_reports_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seconds", "1", "--repeats", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for rate in (8_000, 22_050, 44_100, 48_000):
        assert result["resample"][f"pyav_{rate}_ms"] > 0
        assert result["resample"][f"torchaudio_{rate}_ms"] > 0
    for fmt in FORMATS:
        assert result["decode"][f"{fmt.name}_ms"] > 0
        assert result["decode"][f"{fmt.name}_kib"] > 0
