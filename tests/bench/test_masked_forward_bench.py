"""The masked-forward benchmark runs end to end on the tiny preset and ends with its JSON line."""

from __future__ import annotations

import json

import pytest

from bench.masked_forward import main


def test_quick_run_prints_table_and_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--threads", "1", "--memory-languages", "1,10"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("masked, on the fly") for line in lines)
    result = json.loads(lines[-1])
    assert result["config"] == "tiny" and result["device"] == "cpu"
    assert result["ratio_vs_dense"] > 0 and result["ratio_vs_dense_cached"] > 0
    # one bit per prunable parameter: tiny has 6 layers x (4*256*256 + 2*256*1024) of them
    assert result["bytes_per_language"] == 6 * (4 * 256 * 256 + 2 * 256 * 1024) // 8
    assert result["memory"]["10"]["mask_bytes"] == 10 * result["bytes_per_language"]


@pytest.mark.slow
def test_compiled_mode_in_thread_cpu_time(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--quick", "--threads", "1", "--memory-languages", "1", "--compiled", "--cpu-time"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("clock=thread CPU time" in line for line in lines)
    assert any(line.startswith("cached, compiled conv") for line in lines)
    result = json.loads(lines[-1])
    assert result["compiled_s"] > 0 and result["compiled_vs_cached"] > 0
    # Compiling may be a cache hit (inductor's cache, warmed by an earlier test) and its
    # workers' CPU time is not this thread's: the first call is reported, not compared.
    assert result["first_compiled_call_s"] > 0
