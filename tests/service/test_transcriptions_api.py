"""POST /v1/audio/transcriptions, /v1/models, /v1/languages against a real uvicorn process."""

from __future__ import annotations

import concurrent.futures
import io
import re
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import Server, Utterance
from tests.service.conftest import TEST_MODEL

URL = "/v1/audio/transcriptions"


def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)


def post(server: Server, path: Path | None = None, data: bytes | None = None, **fields: object):  # type: ignore[no-untyped-def]
    content = path.read_bytes() if path is not None else (data or b"")
    return httpx.post(
        server.base_url + URL,
        files={"file": ("clip.wav", content, "audio/wav")},
        data={k: v for k, v in fields.items()},  # type: ignore[misc]
        timeout=60,
    )


def wav_samples(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16_000 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_openai_client_every_response_format(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    utt = speech["en"][0]
    oa = client(server)
    with utt.path.open("rb") as f:
        plain = oa.audio.transcriptions.create(model=TEST_MODEL, file=f, language="en")
    assert isinstance(plain.text, str) and plain.text
    with utt.path.open("rb") as f:
        as_text = oa.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", response_format="text"
        )
    assert as_text == plain.text + "\n"
    with utt.path.open("rb") as f:
        srt = oa.audio.transcriptions.create(
            model=TEST_MODEL, file=f, language="en", response_format="srt"
        )
    assert re.fullmatch(r"(\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+\n\n)+", srt)
    with utt.path.open("rb") as f:
        vtt = oa.audio.transcriptions.create(
            model=TEST_MODEL, file=f, language="en", response_format="vtt"
        )
    assert vtt.startswith("WEBVTT\n\n")
    assert re.fullmatch(
        r"WEBVTT\n\n(\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+\n\n)+", vtt
    )
    with utt.path.open("rb") as f:
        verbose = oa.audio.transcriptions.create(
            model=TEST_MODEL,
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert verbose.text == plain.text
    assert verbose.language == "en"
    assert verbose.duration == pytest.approx(utt.duration, abs=0.01)
    assert verbose.words and verbose.segments
    assert " ".join(w.word for w in verbose.words) == verbose.text
    for w in verbose.words:
        assert 0 <= w.start <= w.end <= verbose.duration + 0.02
    for s in verbose.segments:
        assert {
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        } <= set(s.model_dump())
    assert " ".join(s.text for s in verbose.segments) == verbose.text


def test_mixed_language_requests_share_a_batch_and_match_alone(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    utts = [speech[lang][0] for lang in ("en", "de", "es", "it")]

    def send(u: Utterance) -> httpx.Response:
        return post(server, u.path, language=u.language)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(send, utts))
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    batch_ids = {r.headers["x-lass-batches"] for r in together}
    # One batch of four, holding all four languages (the 300 ms window collects them).
    assert len(batch_ids) == 1, batch_ids
    (header,) = batch_ids
    assert "size=4" in header and "languages=de+en+es+it" in header
    alone = [send(u) for u in utts]
    for a, t in zip(alone, together, strict=True):
        assert a.status_code == 200
        assert "size=1" in a.headers["x-lass-batches"]
        assert a.json()["text"] == t.json()["text"]
    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    # the four-language batch shows in the distinct-languages histogram
    match = re.search(r'^lass_batch_languages_bucket\{le="3.0"\} (\S+)$', metrics, re.M)
    total = re.search(r"^lass_batch_languages_count (\S+)$", metrics, re.M)
    assert match and total and float(total.group(1)) > float(match.group(1))


def test_raw_pcm_body_matches_the_wav_upload(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    utt = speech["de"][1]
    pcm = wav_samples(utt.path).tobytes()
    raw = httpx.post(
        server.base_url + URL,
        params={"language": "de", "sample_rate": "16000"},
        content=pcm,
        headers={"Content-Type": "audio/pcm"},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["text"] == post(server, utt.path, language="de").json()["text"]


def test_language_identification_when_language_is_absent(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    response = post(server, speech["es"][0].path, response_format="verbose_json")
    assert response.status_code == 200, response.text
    assert response.json()["language"] in {"de", "en", "es", "it"}
    assert response.headers["x-lass-language"] == response.json()["language"]


def test_long_audio_is_windowed_and_stitched(
    server: Server, speech: dict[str, list[Utterance]]
) -> None:
    # 70 s: utterances separated by 6 s silences -> pieces of <= 30 s, of which those
    # wholly inside a silence are not run (LASS_SKIP_SILENCE_S): 2 or 3 ran, each in its batch.
    parts = []
    for utts in speech.values():
        for u in utts:
            parts += [wav_samples(u.path), np.zeros(16_000 * 6, dtype="<i2")]
    samples = np.concatenate(parts)[: 16_000 * 70]
    samples = np.pad(samples, (0, max(0, 16_000 * 70 - len(samples))))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
        w.writeframes(samples.tobytes())
    response = post(
        server,
        data=buf.getvalue(),
        language="en",
        response_format="verbose_json",
        **{"timestamp_granularities[]": "word"},
    )
    assert response.status_code == 200, response.text
    assert len(response.headers["x-lass-batches"].split(", ")) in (2, 3)
    body = response.json()
    assert body["duration"] == pytest.approx(70.0)
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts)
    # Text was emitted from the later windows too (a random model makes few word breaks).
    assert body["words"] and body["words"][-1]["end"] > 40
    assert all(w["end"] <= 70.0 for w in body["words"])


def test_models_and_languages(server: Server) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == [TEST_MODEL, "whisper-1"]
    langs = httpx.get(server.base_url + "/v1/languages", timeout=10).json()
    assert langs["object"] == "list"
    assert [entry["code"] for entry in langs["data"]] == ["de", "en", "es", "it"]
    for entry in langs["data"]:
        assert " " in entry["alphabet"]
        assert 0.6 < entry["density"] < 0.8  # random masks at 70 %
        assert entry["specific_parameters"] > 0 and entry["lm"] is False
    missing = httpx.get(server.base_url + "/v1/models/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
