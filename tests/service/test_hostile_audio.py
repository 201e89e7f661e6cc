"""service.audio against hostile uploads (issue 14): inputs that make FFmpeg open other
files or sockets, headers that lie, absurd sample rates, non-finite samples.

Every test here failed before its fix; docs/reliability.md lists them.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from service.audio import (
    ALLOWED_CONTAINERS,
    TARGET_RATE,
    UnsupportedAudioError,
    decode_audio,
    sniff_format,
)


def tone(seconds: float, rate: int = TARGET_RATE) -> np.ndarray:
    return (0.3 * np.sin(np.arange(int(seconds * rate)) / 5)).astype(np.float32)


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A WAV on the "server", by the relative path FFmpeg's concat demuxer accepts."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recordings").mkdir()
    sf.write(tmp_path / "recordings" / "secret.wav", tone(2.0), TARGET_RATE)
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
        sf.write(buf, x, TARGET_RATE, format=fmt, subtype="PCM_16")
        decoded = decode_audio(buf.getvalue())
        assert decoded.format == name and abs(decoded.duration - 1.0) < 0.01
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="adts") as out:
        stream = out.add_stream("aac", rate=TARGET_RATE, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = TARGET_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    decoded = decode_audio(buf.getvalue())
    assert (decoded.format, decoded.codec) == ("aac", "aac")
    assert abs(decoded.duration - 1.0) < 0.1
