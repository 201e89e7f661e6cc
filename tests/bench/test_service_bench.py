"""bench/service.py end to end on a tiny bundle: three policies, one JSON summary line."""

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
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert set(summary["policies"]) == {"mixed", "language", "none"}
    for result in summary["policies"].values():
        assert result["requests"] > 0 and result["errors"] == 0
    assert summary["policies"]["none"]["mean_batch"] == 1.0
    assert summary["mixed_vs_none"] > 0 and summary["mixed_vs_language"] > 0
    assert 0 <= summary["overhead"]["overhead"] < 1
