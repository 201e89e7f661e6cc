"""Service settings, read from ``LASS_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The bundle shipped inside the package (written by ``lass train export``).
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "default_bundle"

BatchMode = Literal["mixed", "language"]


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
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    # Extra names the ``model`` field accepts besides the bundle's own id, so clients
    # written for OpenAI's API work unchanged.
    model_aliases: list[str] = ["whisper-1"]
    warmup: bool = True

    # Dynamic batching: "mixed" batches any languages, "language" only one per batch;
    # max_batch_size=1 disables batching.
    batch_mode: BatchMode = "mixed"
    max_batch_size: int = Field(16, ge=1)
    max_batch_audio_seconds: float = Field(160.0, gt=0, description="padded audio per batch")
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue_size: int = Field(256, ge=1, description="pending work items before 503")
    request_timeout_s: float = Field(120.0, gt=0)
    retry_after_s: int = Field(1, ge=0)

    # Long audio is cut into overlapping windows.
    chunk_seconds: float = Field(30.0, gt=1)
    chunk_overlap_seconds: float = Field(2.0, ge=0)

    # Limits on client input.
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1)
    max_audio_seconds: float = Field(1800.0, gt=0)

    # Decoding: greedy is the fast path; beam search is used when asked for, when the
    # request carries hotwords, or always with decoder="beam".
    decoder: Literal["greedy", "beam"] = "greedy"
    beam_width: int = Field(16, ge=1)
    decode_threads: int = Field(2, ge=1)
