"""Service settings, read from ``LASS_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.beam_search import DEFAULT_BEAM_WIDTH

# The bundle shipped inside the package (written by ``lass train export``).
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "default_bundle"

BatchMode = Literal["auto", "mixed", "language"]


class Settings(BaseSettings):
    """Every knob of the server; ``LASS_<NAME>`` in the environment overrides each."""

    model_config = SettingsConfigDict(env_prefix="LASS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    # Model.
    bundle: Path = DEFAULT_BUNDLE
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # torch intra-op threads the model may use in all, shared by the model threads
    # (None: torch's default, one per core).
    torch_threads: Annotated[int | None, Field(ge=1, description="torch intra-op threads")] = None
    # Batches that run at once, each in its own model thread (service.batcher). None =
    # auto: one on a GPU, two on the CPU, each with an equal share of torch_threads
    # (service.worker.resolve_model_threads; measured: docs/benchmarks.md).
    model_threads: Annotated[int | None, Field(ge=1, description="batches run at once")] = None
    # Extra names the ``model`` field accepts besides the bundle's own id, so clients
    # written for OpenAI's API work unchanged.
    model_aliases: list[str] = ["whisper-1"]
    warmup: bool = True
    # Budget for materialized per-language weights W ⊙ M (an LRU cache; 0 = off, every
    # batch then rebuilds them from the bit-packed masks).
    weight_cache_mb: Annotated[int, Field(ge=0)] = 4096
    # torch.compile the conv feature encoder (model/compiled.py): "auto" = on for the CPU
    # when a C++ compiler is present and the extractor is the layer-norm one (tiny, XLS-R;
    # compiled during warm-up, before readiness), off on CUDA and for base's group norm.
    # The transformer stays eager (compiling it did not pay: docs/benchmarks.md).
    compile: Literal["auto", "on", "off"] = "auto"

    # Languages added at run time (POST /v1/languages, docs/api.md): each verified pack is
    # kept in <packs_dir>/<code>/ and loaded at start-up after the bundle, with the bundle
    # languages removed by DELETE. None: added languages last until the process ends.
    packs_dir: Path | None = None
    # An uploaded pack (tar): the request body, and again what it unpacks to.
    max_pack_bytes: Annotated[int, Field(ge=1024)] = 512 * 1024 * 1024

    # Dynamic batching: "mixed" batches any languages, "language" only one per batch;
    # max_batch_size=1 disables batching. "auto": timed at warm-up on this machine, one-
    # language batches unless mixed ones are clearly faster, batching only where it pays
    # (without warm-up: mixed on CUDA, language on the CPU); /health/ready says which
    # (service.batcher.fastest_way, docs/architecture.md).
    batch_mode: BatchMode = "auto"
    # In mixed batches prefer the languages with the most pending items (fewer, larger
    # language groups per batch); false = plain first-come order among similar lengths.
    batch_language_affinity: bool = True
    max_batch_size: Annotated[int, Field(ge=1)] = 16
    max_batch_audio_seconds: Annotated[float, Field(gt=0, description="padded audio per batch")] = (
        160.0
    )
    max_wait_ms: Annotated[float, Field(ge=0)] = 10.0
    max_queue_size: Annotated[int, Field(ge=1, description="pending work items before 503")] = 256
    # A request must start within this many seconds of queueing, else 503 with Retry-After;
    # one whose estimated wait is already longer is refused at once (0 = no bound).
    max_queue_wait_s: Annotated[float, Field(ge=0)] = 10.0
    request_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    retry_after_s: Annotated[int, Field(ge=0)] = 1

    # Long audio (over chunk_seconds) is cut into pieces of at most chunk_seconds: at the
    # middle of silences found by silero-vad ("vad"), or into windows that overlap by
    # chunk_overlap_seconds ("windows"; also vad's fallback for a speech run with no silence,
    # and for all long audio when silero-vad cannot be loaded).
    long_audio_split: Literal["vad", "windows"] = "vad"
    chunk_seconds: Annotated[float, Field(gt=1)] = 30.0
    chunk_overlap_seconds: Annotated[float, Field(ge=0)] = 2.0
    # With "vad": silences at least this long inside long audio are not run through the
    # model (they decode as blank; 0 = run everything).
    skip_silence_s: Annotated[float, Field(ge=0)] = 2.0

    # Limits on client input.
    max_upload_bytes: Annotated[int, Field(ge=1)] = 25 * 1024 * 1024
    max_audio_seconds: Annotated[float, Field(gt=0)] = 1800.0

    # Streaming (WS /v1/stream and /v1/realtime): see docs/streaming.md.
    max_streams: Annotated[int, Field(ge=1, description="concurrent streams before 1013")] = 64
    stream_idle_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    stream_max_duration_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    stream_max_frame_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    # Received frames not yet processed: a client sending faster than the server
    # transcribes is slowed down (its socket is not read) once this much is waiting.
    stream_buffer_bytes: Annotated[int, Field(ge=1024)] = 4 << 20
    stream_max_utterance_s: Annotated[float, Field(ge=1)] = 20.0
    stream_silence_ms: Annotated[int, Field(ge=0)] = 400
    # Each partial recomputes context + 0.2 s + the new audio: with 1 s of context every
    # 0.5 s a stream costs ~3.4 s of model audio per second for partials (docs/streaming.md).
    stream_partial_interval_ms: Annotated[int, Field(ge=50)] = 500
    stream_partial_context_s: Annotated[float, Field(ge=0)] = 1.0
    stream_partial_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    stream_lid_seconds: Annotated[float, Field(gt=0)] = 1.0
    # On SIGTERM, open streams get this long to send their finals before the WebSockets close.
    stream_drain_s: Annotated[float, Field(ge=0)] = 10.0

    # Decoding: greedy is the fast path; beam search is used when asked for, when the
    # request carries hotwords, or always with decoder="beam".
    decoder: Literal["greedy", "beam"] = "greedy"
    beam_width: Annotated[int, Field(ge=1)] = DEFAULT_BEAM_WIDTH
    # Wall-clock budget of one utterance's beam search (a killable child process); over it: 503.
    decode_budget_s: Annotated[float, Field(gt=0)] = 30.0
    decode_threads: Annotated[int, Field(ge=1)] = 2

    # Access (docs/api.md, "Keys, limits and CORS"). API keys, comma-separated, each
    # optionally followed by its scopes ("<key> admin"); a key may be given as its salted
    # hash "sha256:<salt>:<hex>" (`lass keys hash`). Either setting turns keys on; with
    # neither, every route is open as before. SecretStr: never shown in a repr or a log.
    api_keys: SecretStr = SecretStr("")
    # One key (or hash) per line, "#" comments; re-read when it changes (and on SIGHUP).
    api_keys_file: Path | None = None
    # Also serve /metrics, without a key, on this port (a second small server in the same
    # process, bound to LASS_HOST): for a scraper on a network clients cannot reach.
    metrics_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    # /metrics on the main port asks for a key like the API does (when keys are on).
    metrics_require_key: bool = False
    # Per key (per client address with keys off); 0 = no limit. Token buckets that refill
    # continuously and hold one minute's worth. Audio seconds are counted after decoding.
    rate_limit_requests_per_minute: Annotated[float, Field(ge=0)] = 0.0
    rate_limit_audio_seconds_per_minute: Annotated[float, Field(ge=0)] = 0.0
    max_streams_per_key: Annotated[int, Field(ge=0)] = 0
    # Origins (comma-separated, or "*") whose pages may call the API from a browser; empty =
    # no CORS headers at all. The page lass serves itself is same-origin and needs none.
    cors_origins: str = ""

    # Fault injection for tests and reliability runs (service/faults.py); empty = off.
    faults: str = ""
