"""Property-based tests (hypothesis, issue 14): audio decoding and request parsing take
any input a client can send and answer with a documented error, never another exception.

- ``decode_audio`` on random bytes, on random bytes behind each allowed container's magic
  number, and on valid files of every container with bytes replaced and cut: a
  ``DecodedAudio`` of finite float32 samples, or an ``AudioError`` (4xx, short message);
- ``decode_pcm`` on random bytes, rates and channel counts: the same, and it decodes exactly
  when the parameters are in range and the length holds whole frames;
- ``parse_params`` on random fields: ``TranscriptionRequest`` within the documented ranges,
  or an ``ApiError`` 400 naming a field with a message that quotes at most 100 characters
  of client input; well-formed fields always parse, to the values given.
"""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.audio import (
    MAX_PCM_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    DecodedAudio,
    decode_audio,
    decode_pcm,
)
from service.errors import ApiError, from_audio_error
from service.formats import GRANULARITIES, RESPONSE_FORMATS
from service.params import KNOWN_FIELDS, MAX_BEAM_WIDTH, TranscriptionRequest, parse_params
from tests.service.test_audio import ENCODINGS, encode, wav_bytes

MAX_SECONDS = 30.0
# Long enough for a clear message, far below an echoed megabyte.
MAX_MESSAGE = 600
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tone(seconds: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


SEEDS: dict[str, bytes] = {name: encode(_tone(), enc) for name, enc in ENCODINGS.items()}
SEEDS["wav-float"] = wav_bytes(_tone(), subtype="FLOAT")
MAGIC = [
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"RF64\xff\xff\xff\xffWAVE",
    b"fLaC",
    b"OggS\x00\x02",
    b"ID3\x04\x00\x00\x00\x00\x00\x00",
    b"\xff\xfb\x90\x00",
    b"\xff\xf1\x50\x80",
    b"\x1a\x45\xdf\xa3",
    b"\x00\x00\x00\x18ftypM4A ",
    b"FORM\x00\x00\x00\x00AIFF",
    b"caff\x00\x01\x00\x00",
]


def check_decoded(call: object, *args: object) -> DecodedAudio | None:
    """Run a decoder: its result, checked, or None after a documented error."""
    try:
        out = call(*args)  # type: ignore[operator]
    except AudioError as exc:
        assert 400 <= from_audio_error(exc).status < 500, exc
        assert exc.message and len(exc.message) < MAX_MESSAGE, exc.message
        return None
    assert isinstance(out, DecodedAudio)
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert np.isfinite(out.samples).all()
    # The limit holds on decoded samples, give or take one block of 64 k input frames.
    assert out.duration <= MAX_SECONDS + 65_536 / MIN_SAMPLE_RATE
    return out


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes_decode_or_are_a_documented_error(data: bytes) -> None:
    check_decoded(decode_audio, data, "x", "audio/x", MAX_SECONDS)


@SETTINGS
@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=4096))
def test_garbage_behind_a_container_magic_number(magic: bytes, rest: bytes) -> None:
    check_decoded(decode_audio, magic + rest, None, None, MAX_SECONDS)


@SETTINGS
@given(
    name=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), max_size=12
    ),
    cut=st.floats(min_value=0.0, max_value=1.0),
)
def test_valid_files_with_bytes_replaced_and_cut(
    name: str, edits: list[tuple[int, bytes]], cut: float
) -> None:
    data = bytearray(SEEDS[name])
    for position, replacement in edits:
        at = position % len(data)
        data[at : at + len(replacement)] = replacement
    check_decoded(
        decode_audio, bytes(data[: max(1, int(len(data) * cut))]), None, None, MAX_SECONDS
    )


@SETTINGS
@given(
    data=st.binary(max_size=4000),
    rate=st.one_of(
        st.integers(min_value=-1, max_value=400_000),
        st.sampled_from([MIN_SAMPLE_RATE, 16_000, 44_100, MAX_SAMPLE_RATE]),
    ),
    channels=st.integers(min_value=-1, max_value=MAX_PCM_CHANNELS + 2),
)
def test_raw_pcm(data: bytes, rate: int, channels: int) -> None:
    out = check_decoded(decode_pcm, data, rate, channels, MAX_SECONDS)
    valid = (
        MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
        and 1 <= channels <= MAX_PCM_CHANNELS
        and len(data) > 0
        and len(data) % (2 * channels) == 0
    )
    assert (out is not None) == valid
    if out is not None:
        frames = len(data) // (2 * channels)
        # Exact at 16 kHz; resampling may lose a few output samples at the ends (3 frames
        # at 8 kHz give none: the route answers 400 audio_too_short for that).
        tolerance = 1e-9 if rate == 16_000 else 0.005
        assert math.isclose(out.duration, frames / rate, abs_tol=tolerance), out.duration


# ------------------------------------------------------------------ request parsing

NAMES = st.one_of(st.sampled_from(sorted(KNOWN_FIELDS)), st.text(max_size=20))
VALUES = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.printable, min_size=150, max_size=400),
    st.sampled_from([*RESPONSE_FORMATS, *GRANULARITIES, "greedy", "beam", "en", "auto"]),
    st.integers(min_value=-1000, max_value=300_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


def check_params(params: TranscriptionRequest) -> None:
    assert params.response_format in RESPONSE_FORMATS
    assert 0.0 <= params.temperature <= 1.0
    assert set(params.granularities) <= set(GRANULARITIES)
    assert params.decoder in (None, "greedy", "beam")
    assert params.beam_width is None or 1 <= params.beam_width <= MAX_BEAM_WIDTH
    assert MIN_SAMPLE_RATE <= params.sample_rate <= MAX_SAMPLE_RATE
    assert 1 <= params.channels <= MAX_PCM_CHANNELS
    assert len(params.hotwords) <= 100


@settings(max_examples=400, deadline=None)
@given(fields=st.dictionaries(NAMES, st.lists(VALUES, min_size=1, max_size=3), max_size=8))
def test_any_fields_parse_or_are_a_400_naming_one(fields: dict[str, list[str]]) -> None:
    try:
        params = parse_params(fields)
    except ApiError as exc:
        assert exc.status == 400 and exc.param is not None, exc.message  # "" for a field ""
        assert len(exc.message) < MAX_MESSAGE, exc.message
        return
    check_params(params)


@settings(max_examples=200, deadline=None)
@given(
    response_format=st.sampled_from(RESPONSE_FORMATS),
    temperature=st.floats(min_value=0.0, max_value=1.0),
    beam_width=st.integers(min_value=1, max_value=256),
    decoder=st.sampled_from(["greedy", "beam"]),
    sample_rate=st.integers(min_value=MIN_SAMPLE_RATE, max_value=MAX_SAMPLE_RATE),
    channels=st.integers(min_value=1, max_value=8),
    hotwords=st.lists(
        st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10), max_size=5
    ),
    language=st.sampled_from(["en", "DE", "pt"]),
)
def test_well_formed_fields_always_parse_to_what_was_given(
    response_format: str,
    temperature: float,
    beam_width: int,
    decoder: str,
    sample_rate: int,
    channels: int,
    hotwords: list[str],
    language: str,
) -> None:
    fields = {
        "response_format": [response_format],
        "temperature": [repr(temperature)],
        "beam_width": [str(beam_width)],
        "decoder": [decoder],
        "sample_rate": [str(sample_rate)],
        "channels": [str(channels)],
        "language": [language],
    }
    if hotwords:
        fields["hotwords"] = [",".join(hotwords)]
    if response_format == "verbose_json":
        fields["timestamp_granularities[]"] = ["word", "segment"]
    params = parse_params(fields)
    check_params(params)
    assert (params.response_format, params.temperature, params.beam_width) == (
        response_format,
        temperature,
        beam_width,
    )
    assert (params.decoder, params.sample_rate, params.channels) == (decoder, sample_rate, channels)
    assert params.language == language.lower() and params.hotwords == hotwords


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_the_seed_files_decode(name: str) -> None:
    """The garbling test starts from files that decode (else it would test nothing)."""
    out = check_decoded(decode_audio, SEEDS[name], None, None, MAX_SECONDS)
    assert out is not None and out.duration > 0.2
