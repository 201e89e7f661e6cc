"""bench/service.py end to end on a tiny bundle: the default policies and an eager one, one
JSON summary line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.service import main
from tests.service.conftest import make_bundle


@pytest.mark.slow
def test_bench_service_reports_every_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "b", ["de", "en"], {"de": ["guten tag"], "en": ["good day"]})
    code = main(
        [
            "--bundle",
            str(bundle),
            "--seconds",
            "2",
            "--rounds",
            "1",
            "--concurrency",
            "3",
            "--clip-seconds",
            "1",
            "--overhead-requests",
            "2",
            "--workdir",
            str(tmp_path / "w"),
            "--policies",
            "auto,mixed,language,none,eager-language",
            "--compile",
            "off",  # compiling takes minutes; the compiled forward has its own tests
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert set(summary["policies"]) == {"auto", "mixed", "language", "none", "eager-language"}
    for result in summary["policies"].values():
        assert result["requests"] > 0 and result["errors"] == 0 and result["rtfx"] > 0
        assert result["startup_s"] > 0
    assert summary["policies"]["none"]["mean_batch"] == 1.0
    assert set(summary["vs_best"]) == set(summary["policies"])
    assert max(summary["vs_best"][p] for p in ("mixed", "language", "none")) == 1.0
    assert summary["vs_best_eager"]["eager-language"] == 1.0
    # auto settled on one of the ways by timing them at warm-up
    assert summary["auto_chose"]["way"] in {"mixed", "language", "none"}
    assert set(summary["auto_chose"]["measured_s"]) == {"mixed", "language", "none"}
    assert summary["auto_chose"]["model_threads"] >= 1
    assert summary["mixed_vs_none"] > 0 and summary["mixed_vs_language"] > 0
    assert 0 <= summary["overhead"]["overhead"] < 1
