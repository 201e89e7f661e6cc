"""Every client error answered in OpenAI's shape with the right status; never a 500."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Server, Utterance
from tests.service.conftest import MAX_SECONDS, MAX_UPLOAD

URL = "/v1/audio/transcriptions"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


def send(server: Server, content: bytes, name: str = "clip.wav", **fields: str) -> httpx.Response:
    return httpx.post(
        server.base_url + URL,
        files={"file": (name, content, "application/octet-stream")},
        data=fields,
        timeout=60,
    )


@pytest.fixture(scope="module")
def clip(speech: dict[str, list[Utterance]]) -> bytes:
    return Path(speech["en"][0].path).read_bytes()


def silence_wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(np.zeros(int(seconds * 16_000), dtype="<i2").tobytes())
    return buf.getvalue()


def test_empty_file_is_400(server: Server) -> None:
    err = error_of(send(server, b"", language="en"), 400)
    assert err["param"] == "file" and err["type"] == "invalid_request_error"


def test_undecodable_file_is_415(server: Server) -> None:
    err = error_of(send(server, b"this is not audio at all" * 100, language="en"), 415)
    assert err["param"] == "file"
    # a truncated WAV header
    error_of(send(server, silence_wav(1.0)[:30], language="en"), 415)


def test_too_big_is_413_from_content_length(server: Server) -> None:
    err = error_of(send(server, b"\0" * (MAX_UPLOAD + 1000), language="en"), 413)
    assert err["code"] == "file_too_large"


def test_too_big_is_413_while_streaming(server: Server) -> None:
    # A chunked body (no Content-Length) is counted as it arrives.
    def body() -> Iterator[bytes]:
        yield (
            b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield b"\0" * 65536
        yield b"\r\n--xx--\r\n"

    try:
        response = httpx.post(
            server.base_url + URL,
            content=body(),
            headers={"Content-Type": "multipart/form-data; boundary=xx"},
            timeout=60,
        )
    except httpx.HTTPError:
        # The server may close the connection after answering; that is also a refusal,
        # but then we could not read the 413: make sure the server is still healthy.
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        return
    assert error_of(response, 413)["code"] == "file_too_large"


def test_too_long_audio_is_413(server: Server) -> None:
    err = error_of(send(server, silence_wav(MAX_SECONDS + 2), language="en"), 413)
    assert err["code"] == "audio_too_long"


def test_unknown_language_is_400_listing_supported(server: Server, clip: bytes) -> None:
    err = error_of(send(server, clip, language="xx"), 400)
    assert err["param"] == "language"
    for lang in ("de", "en", "es", "it"):
        assert lang in err["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "mp3"}, "response_format"),
        ({"temperature": "warm"}, "temperature"),
        ({"temperature": "3"}, "temperature"),
        ({"temperature": "nan"}, "temperature"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]"),  # needs verbose
        (
            {"timestamp_granularities[]": "char", "response_format": "verbose_json"},
            "timestamp_granularities[]",
        ),
        ({"model": "gpt-17"}, "model"),
        ({"decoder": "magic"}, "decoder"),
        ({"beam_width": "0"}, "beam_width"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    server: Server, clip: bytes, fields: dict[str, str], param: str
) -> None:
    err = error_of(send(server, clip, language="en", **fields), 400)
    assert err["param"] == param


def test_missing_file_and_wrong_body_kinds(server: Server) -> None:
    url = server.base_url + URL
    err = error_of(httpx.post(url, data={"language": "en"}, files={"x": ("a", b"1")}), 400)
    assert err["param"] in ("x", "file")
    err = error_of(httpx.post(url, data={"language": "en", "file": "text"}, timeout=30), 400)
    assert err["param"] == "file"
    err = error_of(httpx.post(url, json={"file": "x"}, timeout=30), 415)
    assert err["param"] == "Content-Type"
    bad_multipart = httpx.post(
        url,
        content=b"--zz\r\nnonsense",
        headers={"Content-Type": "multipart/form-data; boundary=zz"},
        timeout=30,
    )
    error_of(bad_multipart, 400)
    pcm = httpx.post(
        url,
        params={"language": "en", "sample_rate": "0"},
        content=b"\0\0" * 100,
        headers={"Content-Type": "audio/pcm"},
        timeout=30,
    )
    assert error_of(pcm, 400)["param"] == "sample_rate"


def test_fuzzed_requests_never_500(server: Server, clip: bytes) -> None:
    rng = np.random.default_rng(0)
    url = server.base_url + URL
    for i in range(12):
        junk = rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
        if i % 3 == 0:
            junk = clip[: int(rng.integers(1, len(clip)))]  # truncated real audio
        kind = i % 4
        if kind == 0:
            r = send(server, junk, name=f"f{i}.mp3", language="en")
        elif kind == 1:
            r = httpx.post(url, content=junk, headers={"Content-Type": "audio/ogg"}, timeout=30)
        elif kind == 2:
            r = httpx.post(
                url, content=junk, headers={"Content-Type": "multipart/form-data; boundary=a"}
            )
        else:
            r = httpx.post(
                url,
                params={"language": "en"},
                content=junk[: len(junk) // 2 * 2],
                headers={"Content-Type": "audio/pcm"},
                timeout=30,
            )
        assert r.status_code < 500, (i, r.status_code, r.text)
        if r.status_code >= 400:
            error_of(r, r.status_code)
    for path in ("/v1/nothing", "/v1/models/x"):
        error_of(httpx.get(server.base_url + path), 404)
    error_of(httpx.get(server.base_url + URL), 405)
