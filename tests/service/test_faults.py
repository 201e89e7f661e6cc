"""Injected faults (LASS_FAULTS) against a real server: only the affected requests fail."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from service.faults import Faults, InjectedFaultError
from tests.conftest import Utterance, stop_server
from tests.service.conftest import serve


def test_fault_spec_parses_and_refuses_what_it_does_not_know() -> None:
    faults = Faults.parse("forward:de, oom:2,decode:fr")
    assert faults == Faults(frozenset({"de"}), frozenset({"fr"}), 2)
    assert faults.active and not Faults.parse("").active
    with pytest.raises(torch.OutOfMemoryError):
        faults.before_forward(["en", "es", "it"])
    with pytest.raises(InjectedFaultError):
        faults.before_forward(["en", "de"])
    faults.before_forward(["en", "es"])
    with pytest.raises(InjectedFaultError):
        faults.before_decode("fr")
    faults.before_decode("de")
    for bad in ("crash:de", "oom:x", "forward"):
        with pytest.raises(ValueError, match="LASS_FAULTS"):
            Faults.parse(bad)


def counter(metrics: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}(\{{{re.escape(want)}\}})? ([0-9.e+-]+)$" if want else rf"^{name} (\S+)$"
    for line in metrics.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(m.lastindex or 1))
    return 0.0


def test_a_failing_batch_an_oom_and_a_decoder_crash_fail_only_their_requests(
    tmp_path: Path, tiny_bundle: Path, speech: dict[str, list[Utterance]]
) -> None:
    server = serve(
        tmp_path,
        tiny_bundle,
        # de's forward fails, es's decoding fails, a batch of more than 2 runs out of memory.
        LASS_FAULTS="forward:de,decode:es,oom:2",
        LASS_BATCH_MODE="mixed",
        LASS_MAX_BATCH_SIZE="4",
        LASS_MAX_WAIT_MS="1500",  # the four requests below share one batch of 4
    )
    try:
        url = server.base_url + "/v1/audio/transcriptions"

        def post(lang: str) -> httpx.Response:
            clip = speech[lang][0]
            with clip.path.open("rb") as f:
                return httpx.post(
                    url,
                    files={"file": ("a.wav", f, "audio/wav")},
                    data={"language": lang, "model": "whisper-1"},
                    timeout=60,
                )

        languages = ["en", "de", "es", "it"]
        with ThreadPoolExecutor(4) as pool:
            answers = dict(zip(languages, pool.map(post, languages), strict=True))
        for lang in ("en", "it"):
            assert answers[lang].status_code == 200, answers[lang].text
        for lang in ("de", "es"):
            answer = answers[lang]
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "model_error"
            assert answer.headers["Retry-After"] == "1"
        # The server keeps serving.
        assert post("en").status_code == 200
        metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
        faults = "lass_engine_faults_total"
        assert counter(metrics, faults, kind="oom_split") >= 1
        assert counter(metrics, faults, kind="batch_retry") >= 1
        assert counter(metrics, faults, kind="forward_error") == 1
        assert counter(metrics, faults, kind="decode_error") == 1
        requests = "lass_requests_total"
        endpoint = "/v1/audio/transcriptions"
        assert counter(metrics, requests, endpoint=endpoint, status="503") == 2
        assert counter(metrics, requests, endpoint=endpoint, status="200") == 3
        assert counter(metrics, requests, endpoint=endpoint, status="500") == 0
        assert "injected" in server.log() and "Traceback" not in server.log()
    finally:
        stop_server(server)
