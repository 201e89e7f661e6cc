"""The one place that says what each engine error means to a client.

The engine raises plain exceptions (``service.batcher``, ``service.engine``,
``model.decoding``); REST answers them as :class:`service.errors.ApiError` (status, OpenAI
error code, ``Retry-After`` when retrying helps) and streams as an error event code. Both
read :data:`ENGINE_ERRORS`, so a new engine error is mapped once, for every protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.decoding import DecodeBudgetExceededError
from service.batcher import (
    DeadlineExceededError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from service.engine import (
    AudioTooShortError,
    ModelError,
    NotReadyError,
    UnknownLanguageError,
)
from service.errors import ApiError


@dataclass(frozen=True)
class EngineErrorSpec:
    """How one engine error is answered."""

    status: int  # HTTP status
    code: str  # OpenAI error body ``code``
    stream_code: str  # the ``code`` of a stream's error event
    message: str  # prefix of the message; the exception's own text follows it
    retry: bool = False  # answer with Retry-After (503: the client should come back)
    param: str | None = None  # the request field at fault
    reject: str | None = None  # lass_rejected_requests_total reason, when it counts as one

    def api_error(
        self, exc: Exception, retry_after_s: int, languages: Sequence[str] = ()
    ) -> ApiError:
        """The REST answer to ``exc`` (an error this spec is for)."""
        detail = str(exc)
        message = f"{self.message} ({detail})" if detail else self.message
        if isinstance(exc, UnknownLanguageError) and languages:
            message = f"{detail}; supported: {', '.join(languages)}"
        headers = {"Retry-After": str(max(1, retry_after_s))} if self.retry else None
        return ApiError(self.status, message, param=self.param, code=self.code, headers=headers)


# Subclasses before their bases: the first isinstance match wins.
ENGINE_ERRORS: tuple[tuple[type[Exception], EngineErrorSpec], ...] = (
    (
        QueueTimeoutError,
        EngineErrorSpec(
            503,
            "queue_timeout",
            "server_overloaded",
            "the server is busy; retry later",
            retry=True,
            reject="queue_timeout",
        ),
    ),
    (
        QueueFullError,
        EngineErrorSpec(
            503,
            "queue_full",
            "server_overloaded",
            "the server is busy; retry later",
            retry=True,
            reject="queue_full",
        ),
    ),
    (
        ShuttingDownError,
        EngineErrorSpec(503, "shutting_down", "shutting_down", "the server is shutting down", True),
    ),
    (
        NotReadyError,
        EngineErrorSpec(503, "not_ready", "model_not_ready", "the model is not ready", True),
    ),
    (
        DeadlineExceededError,
        EngineErrorSpec(
            504,
            "timeout",
            "timeout",
            "the request timed out waiting for the model",
            reject="timeout",
        ),
    ),
    (
        DecodeBudgetExceededError,
        EngineErrorSpec(
            503,
            "decode_timeout",
            "decode_timeout",
            "the server is too busy for this beam search now; retry later, or use a smaller "
            "beam_width, fewer hotwords or decoder=greedy",
            retry=True,
            reject="decode_timeout",
        ),
    ),
    (
        ModelError,
        EngineErrorSpec(
            503,
            "model_error",
            "model_error",
            "the model failed on this request (the server logged it); retry later",
            retry=True,
        ),
    ),
    (
        AudioTooShortError,
        EngineErrorSpec(400, "audio_too_short", "audio_too_short", "audio too short", param="file"),
    ),
    (
        UnknownLanguageError,
        EngineErrorSpec(
            400,
            "unsupported_language",
            "unsupported_language",
            "unsupported language",
            param="language",
        ),
    ),
)


def engine_error_spec(exc: BaseException) -> EngineErrorSpec | None:
    """How ``exc`` is answered, or None when it is not an engine error (a bug)."""
    for kind, spec in ENGINE_ERRORS:
        if isinstance(exc, kind):
            return spec
    return None


def stream_error_code(exc: BaseException) -> str:
    """The error event code of a stream for ``exc`` (``internal_error`` for a bug)."""
    spec = engine_error_spec(exc)
    return spec.stream_code if spec is not None else "internal_error"


def engine_api_error(
    exc: Exception, retry_after_s: int, languages: Sequence[str] = ()
) -> ApiError | None:
    """The REST answer to engine error ``exc`` (None when it is not one)."""
    spec = engine_error_spec(exc)
    return None if spec is None else spec.api_error(exc, retry_after_s, languages)
