"""Prometheus metrics of the service, all named ``lass_*``, in a registry of their own.

One ``ServiceMetrics`` per app (tests build several side by side, so nothing touches
prometheus_client's global registry). The service calls the small ``observe_*`` helpers;
``render()`` gives the body and Content-Type of ``GET /metrics``. ``METRIC_NAMES`` lists
every sample name the registry can expose, so deploy files (dashboards, alert rules) are
checked against it in the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from lass import __version__

# Buckets sized for this service: requests of 0.1-30 s audio on a CPU or a GPU.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
LANGUAGE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24)
FRACTION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)

Kind = Literal["counter", "gauge", "histogram", "info"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its name (without the type suffix), type, help and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def sample_names(self) -> tuple[str, ...]:
        """The names its samples carry in the exposition text."""
        if self.kind == "counter":
            return (f"{self.name}_total", f"{self.name}_created")
        if self.kind == "histogram":
            return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count", "created"))
        if self.kind == "info":
            return (f"{self.name}_info",)
        return (self.name,)


SPECS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "lass_requests",
            "counter",
            "HTTP requests answered, by endpoint (route template) and status code.",
            ("endpoint", "status"),
        ),
        MetricSpec(
            "lass_request_duration_seconds",
            "histogram",
            "Time from request arrival to response, by endpoint.",
            ("endpoint",),
        ),
        MetricSpec(
            "lass_queue_wait_seconds",
            "histogram",
            "Time a work item waited in the batcher's queue before its batch started.",
        ),
        MetricSpec(
            "lass_batch_inference_seconds",
            "histogram",
            "Model forward time of one batch (all languages together).",
        ),
        MetricSpec("lass_batch_size", "histogram", "Work items per batch."),
        MetricSpec("lass_batch_languages", "histogram", "Distinct languages in one batch."),
        MetricSpec(
            "lass_batch_padding_ratio",
            "histogram",
            "Fraction of a batch's samples that are padding (0 = no padding).",
        ),
        MetricSpec(
            "lass_audio_seconds",
            "counter",
            "Seconds of audio run through the model, by language.",
            ("language",),
        ),
        MetricSpec(
            "lass_real_time_factor",
            "histogram",
            "Inference seconds per second of audio, per batch (below 1 = faster than real time).",
        ),
        MetricSpec(
            "lass_stage_seconds",
            "histogram",
            "Time spent in a server stage outside the model: audio_decode, ctc_decode, ...",
            ("stage",),
        ),
        MetricSpec("lass_queue_depth", "gauge", "Work items waiting in the batcher's queue."),
        MetricSpec(
            "lass_engine_faults",
            "counter",
            "Model and decoder failures, by kind: batch_retry (a batch failed and its items "
            "were re-run alone), oom_split (out of memory: the batch was halved and retried), "
            "forward_error and decode_error (a request failed with 503 model_error).",
            ("kind",),
        ),
        MetricSpec(
            "lass_silence_skipped_seconds",
            "counter",
            "Seconds of long audio that silero-vad found silent, not run through the model.",
        ),
        MetricSpec(
            "lass_rejected_requests",
            "counter",
            "Requests refused before inference, by reason (queue_full, too_large, "
            "invalid_api_key, rate_limit_requests, rate_limit_audio, rate_limit_streams, ...).",
            ("reason",),
        ),
        MetricSpec(
            "lass_stream_active", "gauge", "Open streams (WebSocket), by protocol.", ("protocol",)
        ),
        MetricSpec(
            "lass_stream_partial_latency_seconds",
            "histogram",
            "From a stream's oldest uncovered audio's arrival to the partial that covers it.",
        ),
        MetricSpec(
            "lass_stream_final_latency_seconds",
            "histogram",
            "From the arrival of the audio that ended an utterance to its final transcript.",
        ),
        MetricSpec(
            "lass_stream_audio_seconds",
            "counter",
            "Seconds of streamed speech finalized, by the utterance's language.",
            ("language",),
        ),
        MetricSpec(
            "lass_stream_closes",
            "counter",
            "Streams closed, by protocol and reason (normal, client_gone, idle_timeout, ...).",
            ("protocol", "reason"),
        ),
        MetricSpec(
            "lass_model",
            "info",
            "The loaded bundle (name@manifest hash, languages), device, dtype and lass version.",
        ),
    )
}

_PROCESS_SAMPLES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
)

METRIC_NAMES: frozenset[str] = frozenset(
    name for spec in SPECS.values() for name in spec.sample_names()
) | frozenset(_PROCESS_SAMPLES)


def bundle_label(bundle: str) -> str:
    """``<directory name>@<first 12 hex digits of sha256(manifest.json)>``: which bundle
    (its manifest lists every file's checksum, so the hash names its content), without
    the path. Just the name when the manifest cannot be read."""
    path = Path(bundle)
    try:
        digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()[:12]
    except OSError:
        return path.name
    return f"{path.name}@{digest}"


class ServiceMetrics:
    """Every ``lass_*`` metric, registered in ``registry`` (a new one unless given)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, process_metrics: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:
            # CPU, memory, open files, GC: the basics a dashboard shows next to ours.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

        def spec(name: str) -> MetricSpec:
            return SPECS[name]

        def histogram(name: str, buckets: Sequence[float]) -> Histogram:
            s = spec(name)
            return Histogram(s.name, s.help, s.labels, buckets=buckets, registry=self.registry)

        def counter(name: str) -> Counter:
            s = spec(name)
            return Counter(s.name, s.help, s.labels, registry=self.registry)

        self.requests = counter("lass_requests")
        self.request_duration = histogram("lass_request_duration_seconds", LATENCY_BUCKETS)
        self.queue_wait = histogram("lass_queue_wait_seconds", QUEUE_BUCKETS)
        self.batch_inference = histogram("lass_batch_inference_seconds", LATENCY_BUCKETS)
        self.batch_size = histogram("lass_batch_size", BATCH_SIZE_BUCKETS)
        self.batch_languages = histogram("lass_batch_languages", LANGUAGE_BUCKETS)
        self.batch_padding = histogram("lass_batch_padding_ratio", FRACTION_BUCKETS)
        self.audio_seconds = counter("lass_audio_seconds")
        self.real_time_factor = histogram("lass_real_time_factor", RTF_BUCKETS)
        self.stage_seconds = histogram("lass_stage_seconds", QUEUE_BUCKETS)
        self.rejected = counter("lass_rejected_requests")
        self.engine_faults = counter("lass_engine_faults")
        self.silence_skipped = counter("lass_silence_skipped_seconds")
        depth = spec("lass_queue_depth")
        self.queue_depth = Gauge(depth.name, depth.help, registry=self.registry)
        active = spec("lass_stream_active")
        self.stream_active = Gauge(active.name, active.help, active.labels, registry=self.registry)
        self.stream_partial_latency = histogram(
            "lass_stream_partial_latency_seconds", QUEUE_BUCKETS
        )
        self.stream_final_latency = histogram("lass_stream_final_latency_seconds", QUEUE_BUCKETS)
        self.stream_audio_seconds = counter("lass_stream_audio_seconds")
        self.stream_closes = counter("lass_stream_closes")
        info = spec("lass_model")
        self.model_info = Info(info.name, info.help, registry=self.registry)

    # -- what the service calls ------------------------------------------------------------

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One answered HTTP request; ``endpoint`` is the route template, not the raw URL."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.request_duration.labels(endpoint=endpoint).observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Time in a non-model stage (``audio_decode``, ``ctc_decode``, ``beam_decode``...)."""
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def observe_batch(
        self,
        languages: Sequence[str],
        lengths_s: Sequence[float],
        padded_length_s: float,
        inference_s: float,
    ) -> None:
        """One model batch: per item its language and audio seconds, the padded length of
        the batch in seconds (every item is padded to it) and the forward time."""
        if len(languages) != len(lengths_s):
            raise ValueError(f"{len(languages)} languages for {len(lengths_s)} lengths")
        if not languages:
            return
        audio = float(sum(lengths_s))
        self.batch_size.observe(len(languages))
        self.batch_languages.observe(len(set(languages)))
        capacity = padded_length_s * len(languages)
        if capacity > 0:
            self.batch_padding.observe(min(1.0, max(0.0, 1.0 - audio / capacity)))
        self.batch_inference.observe(inference_s)
        if audio > 0:
            self.real_time_factor.observe(inference_s / audio)
        for language, seconds in zip(languages, lengths_s, strict=True):
            self.audio_seconds.labels(language=language).inc(seconds)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def observe_fault(self, kind: str) -> None:
        """A model or decoder failure the engine handled (``lass_engine_faults_total``)."""
        self.engine_faults.labels(kind=kind).inc()

    def add_skipped_silence(self, seconds: float) -> None:
        self.silence_skipped.inc(seconds)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from ``depth`` at each scrape (then ``set_queue_depth`` has
        no effect), so every exposition of the registry shows it, including the separate
        metrics port's, which runs in its own thread: ``depth`` must be safe to call there."""
        self.queue_depth.set_function(depth)

    def reject(self, reason: str) -> None:
        """A request refused before inference: ``queue_full``, ``too_large``, ``too_long``,
        ``timeout``, ``unsupported_audio``, ``bad_request``, ``invalid_api_key``,
        ``admin_required``, ``rate_limit_requests``, ``rate_limit_audio``,
        ``rate_limit_streams``... Never a key or a client address: labels stay few."""
        self.rejected.labels(reason=reason).inc()

    def stream_opened(self, protocol: str) -> None:
        self.stream_active.labels(protocol=protocol).inc()

    def stream_closed(self, protocol: str, reason: str) -> None:
        self.stream_active.labels(protocol=protocol).dec()
        self.stream_closes.labels(protocol=protocol, reason=reason).inc()

    def observe_partial_latency(self, seconds: float) -> None:
        self.stream_partial_latency.observe(seconds)

    def observe_final_latency(self, seconds: float) -> None:
        self.stream_final_latency.observe(seconds)

    def add_stream_audio(self, language: str, seconds: float) -> None:
        self.stream_audio_seconds.labels(language=language).inc(seconds)

    def set_model_info(
        self, bundle: str, languages: Sequence[str], device: str, dtype: str
    ) -> None:
        """``bundle``: the bundle's directory; exposed as :func:`bundle_label`, never the
        path (anyone who can scrape /metrics would learn the server's file layout)."""
        self.model_info.info(
            {
                "bundle": bundle_label(bundle),
                "languages": ",".join(sorted(languages)),
                "device": device,
                "dtype": dtype,
                "version": __version__,  # tells rolled-out builds apart on a dashboard
            }
        )

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Exposition body of every metric and its Content-Type, for ``GET /metrics``.

        ``accept``: the request's Accept header. Prometheus text 0.0.4 unless the scraper
        asks for OpenMetrics (every Prometheus reads 0.0.4; our names need no escaping).
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
