"""The audio front end (``model.audio``) against hostile uploads (issue 14): inputs that make
FFmpeg open other files or sockets, headers that lie, absurd sample rates, non-finite samples.

Every test here failed before its fix; docs/reliability.md lists them.
"""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from model.audio import (
    ALLOWED_CONTAINERS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioTooLongError,
    InvalidAudioError,
    UnsupportedAudioError,
    decode_audio,
    sniff_format,
)
from service.errors import from_audio_error


def tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    return (0.3 * np.sin(np.arange(int(seconds * rate)) / 5)).astype(np.float32)


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A WAV on the "server", by the relative path FFmpeg's concat demuxer accepts."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recordings").mkdir()
    sf.write(tmp_path / "recordings" / "secret.wav", tone(2.0), SAMPLE_RATE)
    return "recordings/secret.wav"


def nested_open_payloads(path: str) -> dict[str, bytes]:
    """Uploads that name another file or a network source instead of holding audio."""
    return {
        "ffconcat": f"ffconcat version 1.0\nfile {path}\n".encode(),
        "ffconcat-file-url": f"ffconcat version 1.0\nfile file:{path}\n".encode(),
        "hls": (
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:2.0,\n{path}\n#EXTINF:2.0,\nfile:{path}\n#EXT-X-ENDLIST\n"
        ).encode(),
        "sdp": (
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 45678 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ),
        "file-url": f"file:{path}".encode(),
    }


@pytest.mark.parametrize("kind", list(nested_open_payloads("x")))
@pytest.mark.parametrize("name", ["upload.bin", "list.ffconcat", "x.sdp", "a.m3u8", "a.wav"])
def test_uploads_that_name_other_files_are_415_at_once(secret: str, kind: str, name: str) -> None:
    data = nested_open_payloads(secret)[kind]
    start = time.monotonic()
    with pytest.raises(UnsupportedAudioError) as info:
        decode_audio(data, filename=name)
    assert time.monotonic() - start < 1.0  # the SDP demuxer waited 20 s on a UDP port
    assert secret not in info.value.message and "recordings" not in info.value.message
    assert "No such file" not in info.value.message


def test_a_missing_and_an_existing_path_give_the_same_error(secret: str) -> None:
    # The error must not tell a client whether a path exists on the server.
    messages = set()
    for path in (secret, "recordings/missing.wav", "recordings", "etc/passwd"):
        for kind, data in nested_open_payloads(path).items():
            with pytest.raises(UnsupportedAudioError) as info:
                decode_audio(data)
            messages.add((kind, info.value.message))
    assert len({message for _, message in messages}) == 1, messages


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "webm"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "matroska"),
        (b"\x00\x00\x00\x20ftypM4A ", "mp4"),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "mp4"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00", "mp3"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "aac"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xf1\x50\x80", "aac"),
        (b"FORM\x00\x00\x10\x00AIFFCOMM", "aiff"),
        (b"FORM\x00\x00\x10\x00AIFCFVER", "aiff"),
        (b"caff\x00\x01\x00\x00desc", "caf"),
        (b"ffconcat version 1.0\n", None),
        (b"#EXTM3U\n", None),
        (b"v=0\r\no=- 0 0 IN IP4", None),
        (b"file:/etc/passwd", None),
        (b"<?xml version", None),
    ],
)
def test_sniff_knows_only_the_allowed_containers(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected
    assert expected is None or expected in ALLOWED_CONTAINERS


def test_aiff_and_caf_and_adts_decode(tmp_path: Path) -> None:
    x = tone(1.0)
    for fmt, name in (("AIFF", "aiff"), ("CAF", "caf")):
        buf = io.BytesIO()
        sf.write(buf, x, SAMPLE_RATE, format=fmt, subtype="PCM_16")
        decoded = decode_audio(buf.getvalue())
        assert decoded.format == name and abs(decoded.duration - 1.0) < 0.01
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="adts") as out:
        stream = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    decoded = decode_audio(buf.getvalue())
    assert (decoded.format, decoded.codec) == ("aac", "aac")
    assert abs(decoded.duration - 1.0) < 0.1


def riff_wav(
    fmt_tag: int = 1, channels: int = 1, rate: int = 16_000, bits: int = 16, data: bytes = b""
) -> bytes:
    """A WAV with the header fields given, as written by hand (soundfile refuses bad ones)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    "header",
    [{"bits": 0}, {"fmt_tag": 0x1234}, {"fmt_tag": 0}, {"channels": 0}, {"rate": 0}],
    ids=["0-bits", "unknown-tag", "tag-0", "0-channels", "rate-0"],
)
def test_broken_wav_headers_are_415(header: dict[str, int]) -> None:
    with pytest.raises(UnsupportedAudioError):
        decode_audio(riff_wav(data=b"\0" * 3200, **header))


def flac_of_unknown_length(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A FLAC as an encoder writing to a pipe leaves it: STREAMINFO's total samples and
    MD5 are 0 (the encoder could not seek back to fill them in)."""
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    fields = 8 + 10  # after the magic, the block header and min/max block and frame sizes
    packed = int.from_bytes(data[fields : fields + 8], "big") & ~((1 << 36) - 1)
    data[fields : fields + 8] = packed.to_bytes(8, "big")
    data[fields + 8 : fields + 24] = bytes(16)
    return bytes(data)


def test_flac_of_unknown_length_is_read_to_its_end() -> None:
    x = tone(3.0)
    decoded = decode_audio(flac_of_unknown_length(x), max_duration=1800)
    assert abs(decoded.duration - 3.0) < 0.01
    with pytest.raises(AudioTooLongError) as info:
        decode_audio(flac_of_unknown_length(tone(12.0)), max_duration=10)
    assert "at least 1" in info.value.message  # counted while decoding, not 5.8e14 s


def test_non_finite_samples_are_400_saying_so() -> None:
    x = tone(2.0)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[int(0.5 * SAMPLE_RATE) :: 100] = bad  # 1 % of the samples from 0.5 s on
        buf = io.BytesIO()
        sf.write(buf, y, SAMPLE_RATE, format="WAV", subtype="FLOAT")
        with pytest.raises(InvalidAudioError) as info:
            decode_audio(buf.getvalue())
        assert from_audio_error(info.value).status == 400 and info.value.code == "invalid_audio"
        assert "NaN or infinite" in info.value.message and "0.500 s" in info.value.message


@pytest.mark.parametrize("rate", [1, 4_000, 7_999, 192_001, 384_000])
def test_sample_rates_outside_the_range_are_415_before_decoding(rate: int) -> None:
    # 1 Hz: a 3.6 KB WAV that decoded to 1 799 s of 16 kHz audio; 384 kHz: a small FLAC of
    # silence that decoded for 94 s into 3.7 GB.
    samples = np.zeros(max(rate, 1) * 2, dtype=np.float32)
    for data in (riff_wav(rate=rate, data=b"\0" * 3600), flac_or_wav(samples, rate)):
        start = time.monotonic()
        with pytest.raises(UnsupportedAudioError, match="sample rate"):
            decode_audio(data, max_duration=1800)
        assert time.monotonic() - start < 0.5


def flac_or_wav(samples: np.ndarray, rate: int) -> bytes:
    """FLAC where libsndfile writes the rate, else a 16-bit WAV."""
    buf = io.BytesIO()
    try:
        sf.write(buf, samples, rate, format="FLAC")
    except sf.LibsndfileError:
        buf = io.BytesIO()
        sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_rates_at_the_range_ends_decode() -> None:
    for rate in (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE):
        buf = io.BytesIO()
        sf.write(buf, tone(1.0, rate), rate, format="FLAC")
        assert abs(decode_audio(buf.getvalue()).duration - 1.0) < 0.01


def test_duration_limit_holds_while_decoding_a_header_that_lies() -> None:
    # A WAV whose data chunk claims 4 s but holds 20 s: counted while reading.
    data = bytearray(riff_wav(data=(tone(20.0) * 32767).astype("<i2").tobytes()))
    size_at = data.index(b"data") + 4
    data[size_at : size_at + 4] = struct.pack("<I", 4 * SAMPLE_RATE * 2)
    try:
        decoded = decode_audio(bytes(data), max_duration=10)
    except AudioTooLongError:
        return
    assert decoded.duration <= 10.5
