"""One request model for REST and streams, one table for engine errors (issue 12, point 6)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model.audio import MAX_PCM_CHANNELS
from model.decoding import DecodeBudgetExceededError
from service.batcher import DeadlineExceededError, QueueFullError, QueueTimeoutError
from service.engine import ModelError, NotReadyError, UnknownLanguageError
from service.engine_errors import ENGINE_ERRORS, engine_api_error, stream_error_code
from service.errors import ApiError
from service.params import MAX_BEAM_WIDTH, MAX_HOTWORD_BYTES, parse_params
from service.routers.stream import StartMessage


def start(**fields: object) -> StartMessage:
    return StartMessage.model_validate({"type": "start", **fields})


def test_rest_and_streams_accept_the_same_decoding_fields_within_the_same_limits() -> None:
    long_word = "x" * (MAX_HOTWORD_BYTES + 1)
    for value, ok in ((MAX_BEAM_WIDTH, True), (MAX_BEAM_WIDTH + 1, False), (0, False)):
        rest_ok = stream_ok = True
        try:
            parse_params({"beam_width": [str(value)]})
        except ApiError:
            rest_ok = False
        try:
            start(beam_width=value)
        except ValidationError:
            stream_ok = False
        assert rest_ok == stream_ok == ok, value
    with pytest.raises(ApiError, match="hotword"):
        parse_params({"hotwords": [long_word]})
    with pytest.raises(ValidationError, match="hotword"):
        start(hotwords=[long_word])
    # Raw PCM channels: the audio front end's own limit, for both.
    parse_params({"channels": [str(MAX_PCM_CHANNELS)]})
    start(channels=MAX_PCM_CHANNELS)
    with pytest.raises(ApiError):
        parse_params({"channels": [str(MAX_PCM_CHANNELS + 1)]})
    with pytest.raises(ValidationError):
        start(channels=MAX_PCM_CHANNELS + 1)


def test_an_explicit_decoder_wins_over_the_servers_default_for_both() -> None:
    rest = parse_params({"decoder": ["greedy"]})
    stream = start(decoder="greedy")
    assert not rest.options("beam").beam and not stream.options("beam").beam
    assert parse_params({}).options("beam").beam and start().options("beam").beam
    # Hotwords need the beam search.
    assert start(hotwords=["lass"]).options("greedy").beam


def test_errors_name_their_field() -> None:
    for fields, param in (
        ({"temperature": ["nan"]}, "temperature"),
        ({"response_format": ["xml"]}, "response_format"),
        ({"timestamp_granularities[]": ["word"]}, "timestamp_granularities[]"),
        ({"timestamp_granularities[]": ["minute"], "response_format": ["verbose_json"]}, None),
        ({"language": ["en", "de"]}, "language"),
        ({"colour": ["red"]}, "colour"),
    ):
        with pytest.raises(ApiError) as caught:
            parse_params(fields)
        assert caught.value.status == 400
        assert caught.value.param == (param or "timestamp_granularities[]"), caught.value.message


@pytest.mark.parametrize(
    ("exc", "status", "code", "stream_code"),
    [
        (QueueFullError("queue holds 9 items"), 503, "queue_full", "server_overloaded"),
        (QueueTimeoutError("waited 10 s"), 503, "queue_timeout", "server_overloaded"),
        (NotReadyError("loading"), 503, "not_ready", "model_not_ready"),
        (DeadlineExceededError("late"), 504, "timeout", "timeout"),
        (DecodeBudgetExceededError(30.0), 503, "decode_timeout", "decode_timeout"),
        (ModelError("boom"), 503, "model_error", "model_error"),
        (UnknownLanguageError("language 'xx' is not supported"), 400, "unsupported_language", None),
    ],
)
def test_every_engine_error_maps_once_for_rest_and_streams(
    exc: Exception, status: int, code: str, stream_code: str | None
) -> None:
    error = engine_api_error(exc, retry_after_s=0, languages=["de", "en"])
    assert error is not None and (error.status, error.code) == (status, code)
    assert stream_error_code(exc) == (stream_code or code)
    if status == 503:
        assert error.headers["Retry-After"] == "1"  # never 0
    if isinstance(exc, UnknownLanguageError):
        assert error.message.endswith("supported: de, en") and error.param == "language"
    assert engine_api_error(RuntimeError("a bug"), 1) is None
    assert stream_error_code(RuntimeError("a bug")) == "internal_error"
    # Subclasses come before their bases in the table.
    kinds = [kind for kind, _ in ENGINE_ERRORS]
    for i, kind in enumerate(kinds):
        assert not any(issubclass(kind, base) for base in kinds[:i]), kind
