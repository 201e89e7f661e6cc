"""What a transcription request may ask for: one pydantic model per request kind.

:class:`DecodeParams` (decoder, beam width, hotwords) is shared by the REST request
(:class:`TranscriptionRequest`) and the native stream's start message, so both accept the
same values within the same limits; the audio limits (sample rate, channels) are the audio
front end's own (``model.audio``), so no request can pass a check here and then fail one
there. :func:`parse_params` turns a form's text fields into a request, or an ApiError 400
that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.audio import MAX_PCM_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from service.engine import DecodeOptions
from service.errors import ApiError, bad_field
from service.formats import GRANULARITIES, RESPONSE_FORMATS

# Hotwords (docs/api.md, "Limits"): pyctcdecode matches every hotword against every beam's
# text at every frame, so their size multiplies the search's cost (one 1 MB phrase held a
# beam search for 22+ minutes). A hotword is a word or a short phrase.
MAX_HOTWORDS = 100
MAX_HOTWORD_BYTES = 64  # one phrase, UTF-8
MAX_HOTWORD_WORDS = 5  # one phrase
MAX_HOTWORDS_TOTAL_BYTES = 1024
MAX_BEAM_WIDTH = 256
# Beam-search work: beam_width x audio seconds x (1 + hotword bytes / HOTWORD_BYTES_PER_UNIT)
# may not pass BEAM_WORK_BUDGET (or, when larger, what the server's own defaults need:
# LASS_BEAM_WIDTH over LASS_MAX_AUDIO_SECONDS). Measured without an LM, the costly case:
# about 0.3 ms of search per unit on one core, so the budget is ~10 s; beam 16 fits 30 min
# of audio, beam 256 112 s, and 10 hotwords of 8 letters at beam 16 fit 85 s
# (docs/reliability.md).
BEAM_WORK_BUDGET = 28_800
HOTWORD_BYTES_PER_UNIT = 4

# OpenAI fields lass accepts but has no use for (a CTC model has no prompt or sampling).
IGNORED_FIELDS = frozenset({"prompt", "stream", "include[]", "chunking_strategy"})
# Form fields that may be repeated (each value is one item of the list).
LIST_FIELDS = frozenset(
    {"hotwords", "hotwords[]", "timestamp_granularities", "timestamp_granularities[]"}
)


def echo(text: str, limit: int = 100) -> str:
    """A client-supplied value, cut to ``limit`` characters, for an error message."""
    return text if len(text) <= limit else text[:limit] + "…"


def check_hotwords(words: list[str]) -> list[str]:
    """``words`` stripped of blanks, within the hotword limits (ValueError saying which)."""
    words = [w.strip() for w in words if w.strip()]
    if len(words) > MAX_HOTWORDS:
        raise ValueError(f"at most {MAX_HOTWORDS} hotwords")
    for word in words:
        if len(word.encode()) > MAX_HOTWORD_BYTES or len(word.split()) > MAX_HOTWORD_WORDS:
            raise ValueError(
                f"a hotword is at most {MAX_HOTWORD_WORDS} words and {MAX_HOTWORD_BYTES} bytes;"
                f" got {echo(word)!r}"
            )
    if sum(len(w.encode()) for w in words) > MAX_HOTWORDS_TOTAL_BYTES:
        raise ValueError(f"hotwords hold at most {MAX_HOTWORDS_TOTAL_BYTES} bytes")
    return words


Hotwords = Annotated[list[str], AfterValidator(check_hotwords)]
BeamWidth = Annotated[int | None, Field(ge=1, le=MAX_BEAM_WIDTH)]
SampleRate = Annotated[int, Field(ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)]
Channels = Annotated[int, Field(ge=1, le=MAX_PCM_CHANNELS)]  # of raw PCM


class DecodeParams(BaseModel):
    """How to decode: REST fields and the stream start message's alike. Unknown fields are
    refused; ``decoder`` None means the server's ``LASS_DECODER``."""

    model_config = ConfigDict(extra="forbid", strict=False)

    decoder: Literal["greedy", "beam"] | None = None
    beam_width: BeamWidth = None
    hotwords: Hotwords = []

    def options(self, default_decoder: str) -> DecodeOptions:
        """Beam search when asked for (else as ``LASS_DECODER`` says) or with hotwords."""
        beam = (self.decoder or default_decoder) == "beam" or bool(self.hotwords)
        return DecodeOptions(beam=beam, hotwords=tuple(self.hotwords), beam_width=self.beam_width)


class TranscriptionRequest(DecodeParams):
    """The fields of ``POST /v1/audio/transcriptions`` (docs/api.md)."""

    model: str | None = None
    language: str | None = None
    response_format: Literal[RESPONSE_FORMATS] = "json"  # type: ignore[valid-type]
    temperature: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0
    granularities: list[Literal[GRANULARITIES]] = ["segment"]  # type: ignore[valid-type]
    # Of a raw PCM body (``audio/pcm``): the container says it otherwise.
    sample_rate: SampleRate = 16_000
    channels: Channels = 1

    @model_validator(mode="after")
    def _granularities_need_verbose_json(self) -> TranscriptionRequest:
        given = "granularities" in self.model_fields_set
        if given and self.response_format != "verbose_json":
            raise ValueError("timestamp_granularities[] requires response_format=verbose_json")
        if not self.granularities:
            self.granularities = ["segment"]
        return self


# Form field -> model field.
_FIELD_NAMES = {
    "timestamp_granularities[]": "granularities",
    "timestamp_granularities": "granularities",
    "hotwords[]": "hotwords",
}
KNOWN_FIELDS = (
    frozenset({"file"})
    | frozenset(TranscriptionRequest.model_fields) - {"granularities"}
    | frozenset(_FIELD_NAMES)
    | IGNORED_FIELDS
)


def first_problem(exc: ValidationError) -> tuple[list[str], str]:
    """(where, message) of the first problem pydantic found: the field's path (empty for a
    check of the whole model) and pydantic's message without its "Value error, " prefix."""
    first = exc.errors()[0]
    where = [str(p) for p in first.get("loc", ())]
    return where, str(first.get("msg", "invalid value")).removeprefix("Value error, ")


def validation_error(exc: ValidationError, param_names: Mapping[str, str] = {}) -> ApiError:
    """The first problem pydantic found, as a 400 naming its field."""
    where, message = first_problem(exc)
    field = where[0] if where else ""
    param = param_names.get(field, field)
    if field:
        return bad_field(param, f"{param}: {message}")
    # A check of the whole request: its message names the field first.
    return bad_field(message.split(" ", 1)[0], message)


def parse_params(fields: Mapping[str, Sequence[str]]) -> TranscriptionRequest:
    """A form's text fields (each the list of its values) as a request; ApiError 400
    naming the field that is unknown, repeated, not a number or out of range."""
    unknown = sorted(set(fields) - KNOWN_FIELDS)
    if unknown:
        name = echo(unknown[0])
        raise bad_field(name, f"unknown field '{name}'", code="unknown_parameter")
    values: dict[str, Any] = {}
    for name, given in fields.items():
        if name in IGNORED_FIELDS or name == "file":
            continue
        key = _FIELD_NAMES.get(name, name)
        if name in LIST_FIELDS:
            items = values.setdefault(key, [])
            if key == "hotwords":
                for raw in given:  # comma-separated, and checked before a huge field is split
                    if len(raw.encode()) > MAX_HOTWORDS_TOTAL_BYTES:
                        raise bad_field(
                            "hotwords", f"hotwords hold at most {MAX_HOTWORDS_TOTAL_BYTES} bytes"
                        )
                    items.extend(raw.split(","))
            else:
                items.extend(given)
            continue
        if len(given) > 1:
            raise bad_field(name, f"'{name}' given {len(given)} times; give it once")
        value = given[0].strip() if given else ""
        if value == "":
            continue  # an empty field is the default, as OpenAI's API treats it
        values[key] = value
    if "language" in values:
        values["language"] = values["language"].lower()
    try:
        return TranscriptionRequest.model_validate(values)
    except ValidationError as exc:
        names = {"granularities": "timestamp_granularities[]"}
        raise validation_error(exc, names) from None


def beam_work(beam_width: int, seconds: float, hotwords: Sequence[str]) -> float:
    """Units of beam-search work (see ``BEAM_WORK_BUDGET``)."""
    hotword_bytes = sum(len(w.encode()) for w in hotwords)
    return beam_width * seconds * (1 + hotword_bytes / HOTWORD_BYTES_PER_UNIT)


def check_beam_work(
    beam_width: int, seconds: float, hotwords: Sequence[str], budget: float
) -> None:
    """ApiError 400 (``beam_search_too_large``) when the search would pass ``budget``."""
    if beam_work(beam_width, seconds, hotwords) <= budget:
        return
    fits = int(budget // beam_work(1, seconds, hotwords))
    advice = f"use beam_width {fits} or less" if fits >= 1 else "send fewer or shorter hotwords"
    raise bad_field(
        "hotwords" if hotwords and fits < 1 else "beam_width",
        f"beam search over {seconds:.1f} s of audio at beam_width {beam_width} with "
        f"{sum(len(w.encode()) for w in hotwords)} bytes of hotwords is over this server's "
        f"budget (beam_width x seconds x (1 + hotword bytes / {HOTWORD_BYTES_PER_UNIT}) <= "
        f"{budget:g}): {advice}, or decoder=greedy",
        code="beam_search_too_large",
    )


def openapi_form_schema() -> dict[str, Any]:
    """The multipart form's JSON schema, from :class:`TranscriptionRequest` (plus ``file``
    and the form's own field names), for the OpenAPI document."""
    schema = TranscriptionRequest.model_json_schema()
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "the audio"},
        "prompt": {"type": "string", "description": "accepted and ignored"},
    }
    for name, prop in schema["properties"].items():
        if name == "granularities":
            properties["timestamp_granularities[]"] = prop
        else:
            properties[name] = prop
    properties["hotwords"]["maxItems"] = MAX_HOTWORDS
    return {"type": "object", "required": ["file"], "properties": properties}
