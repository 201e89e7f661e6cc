"""service.metrics: values, exposition text, and Debian's ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lass import __version__
from service.metrics import METRIC_NAMES, SPECS, ServiceMetrics


def recorded() -> ServiceMetrics:
    """A registry with a value in every metric, like a server after some traffic."""
    m = ServiceMetrics()
    m.set_model_info("/models/default", ["en", "de", "es"], "cpu", "float32")
    m.observe_request("/v1/audio/transcriptions", 200, 0.42)
    m.observe_request("/v1/audio/transcriptions", 415, 0.003)
    m.observe_request("/health/ready", 200, 0.001)
    m.observe_queue_wait(0.012)
    m.observe_stage("audio_decode", 0.004)
    m.observe_stage("ctc_decode", 0.002)
    # 3 items of 4, 2 and 2 s padded to 4 s: 12 s capacity, 8 s audio -> 1/3 padding.
    m.observe_batch(["en", "de", "en"], [4.0, 2.0, 2.0], 4.0, 0.8)
    m.set_queue_depth(5)
    m.reject("queue_full")
    m.reject("too_large")
    m.stream_opened("native")
    m.stream_opened("native")
    m.stream_closed("native", "client_gone")
    m.observe_partial_latency(0.3)
    m.observe_final_latency(0.2)
    m.add_stream_audio("de", 2.5)
    m.observe_fault("oom_split")
    m.observe_fault("decode_error")
    m.add_skipped_silence(12.5)
    return m


def test_fault_and_silence_metrics() -> None:
    values = samples(recorded())
    assert values[("lass_engine_faults_total", (("kind", "oom_split"),))] == 1
    assert values[("lass_engine_faults_total", (("kind", "decode_error"),))] == 1
    assert values[("lass_silence_skipped_seconds_total", ())] == pytest.approx(12.5)


def test_stream_metrics() -> None:
    values = samples(recorded())
    assert values[("lass_stream_active", (("protocol", "native"),))] == 1
    closes = (("protocol", "native"), ("reason", "client_gone"))
    assert values[("lass_stream_closes_total", closes)] == 1
    assert values[("lass_stream_partial_latency_seconds_count", ())] == 1
    assert values[("lass_stream_final_latency_seconds_sum", ())] == pytest.approx(0.2)
    assert values[("lass_stream_audio_seconds_total", (("language", "de"),))] == 2.5


def samples(m: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = m.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_values_after_a_batch() -> None:
    values = samples(recorded())
    assert (
        values[
            ("lass_requests_total", (("endpoint", "/v1/audio/transcriptions"), ("status", "415")))
        ]
        == 1
    )
    assert values[("lass_audio_seconds_total", (("language", "en"),))] == 6.0
    assert values[("lass_audio_seconds_total", (("language", "de"),))] == 2.0
    assert values[("lass_batch_size_sum", ())] == 3
    assert values[("lass_batch_languages_sum", ())] == 2
    assert values[("lass_batch_padding_ratio_sum", ())] == pytest.approx(1 / 3)
    assert values[("lass_real_time_factor_sum", ())] == pytest.approx(0.1)
    assert values[("lass_batch_inference_seconds_count", ())] == 1
    assert values[("lass_queue_depth", ())] == 5
    assert values[("lass_rejected_requests_total", (("reason", "queue_full"),))] == 1
    labels = dict(next(labels for name, labels in values if name == "lass_model_info"))
    assert labels == {
        "bundle": "default",
        "languages": "de,en,es",
        "device": "cpu",
        "dtype": "float32",
        "version": __version__,
    }


def test_every_exposed_sample_is_in_metric_names() -> None:
    exposed = {name for name, _ in samples(recorded())}
    lass = {n for n in exposed if n.startswith("lass_")}
    assert lass <= METRIC_NAMES
    # ... and every lass_ family shows up once it has a value.
    for spec in SPECS.values():
        assert any(n in lass for n in spec.sample_names()), spec.name
    assert "process_resident_memory_bytes" in exposed


def test_registries_are_independent() -> None:
    a, b = ServiceMetrics(process_metrics=False), ServiceMetrics(process_metrics=False)
    a.reject("queue_full")
    assert ("lass_rejected_requests_total", (("reason", "queue_full"),)) in samples(a)
    assert ("lass_rejected_requests_total", (("reason", "queue_full"),)) not in samples(b)


def test_batch_arguments_must_match() -> None:
    with pytest.raises(ValueError, match="2 languages for 1 lengths"):
        ServiceMetrics(process_metrics=False).observe_batch(["en", "de"], [1.0], 1.0, 0.1)


def test_render_content_types() -> None:
    m = recorded()
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert body.startswith(b"# HELP")
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_promtool_check_metrics_reports_nothing() -> None:
    # promtool lints names, units, counter suffixes and HELP text; it prints nothing when clean.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (Makefile TEST_APT)"
    body, _ = recorded().render()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    report = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, report
    assert report.strip() == "", report


def test_the_apps_metrics_route_passes_promtool() -> None:
    # The real app (routers, middlewares), in-process, without loading a model: the
    # /metrics route serves this registry and the request middleware feeds it.
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings()))  # not entered: no lifespan, no bundle
    assert client.get("/health/live").status_code == 200
    assert client.get("/no/such/route").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"lass_requests", "lass_queue_depth", "lass_request_duration_seconds"} <= families
    assert 'lass_requests_total{endpoint="/health/live",status="200"} 1.0' in response.text
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=response.content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip()
