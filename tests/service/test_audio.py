"""The audio front end (``model.audio``) as the service uses it: every container from real
(espeak-ng) speech, errors and their HTTP statuses, raw PCM."""

from __future__ import annotations

import io
import re
import tempfile
import tracemalloc
from dataclasses import dataclass

import av
import numpy as np
import pytest
import soundfile as sf

from model.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    InvalidAudioParameterError,
    UnsupportedAudioError,
    decode_audio,
    decode_pcm,
    resample,
    sniff_format,
)
from service.errors import from_audio_error
from tests.conftest import Utterance


@dataclass(frozen=True)
class Encoding:
    """How to write a test file with PyAV: container, codec, rate, channels."""

    container: str
    codec: str
    rate: int
    channels: int
    expect_format: str
    expect_codec: str


ENCODINGS = {
    "wav-44k-stereo": Encoding("wav", "pcm_s16le", 44_100, 2, "wav", "pcm_s16le"),
    "flac-48k-mono": Encoding("flac", "flac", 48_000, 1, "flac", "flac"),
    "mp3-44k-stereo": Encoding("mp3", "libmp3lame", 44_100, 2, "mp3", "mp3"),
    "ogg-opus-48k": Encoding("ogg", "libopus", 48_000, 1, "ogg", "opus"),
    "ogg-vorbis-22k": Encoding("ogg", "vorbis", 22_050, 2, "ogg", "vorbis"),
    "webm-opus-48k-stereo": Encoding("webm", "libopus", 48_000, 2, "webm", "opus"),
    "m4a-aac-44k": Encoding("ipod", "aac", 44_100, 1, "mp4", "aac"),
    "mp4-aac-32k-stereo": Encoding("mp4", "aac", 32_000, 2, "mp4", "aac"),
    # 16-bit PCM in matroska: PyAV decodes it to s16, so the format-conversion path runs.
    "mka-pcm-22k-stereo": Encoding("matroska", "pcm_s16le", 22_050, 2, "matroska", "pcm_s16le"),
}


def stereo_of(samples: np.ndarray, channels: int) -> np.ndarray:
    """[T] -> [C, T]: the second channel is the first at half level (mean keeps the shape)."""
    if channels == 1:
        return samples[None, :]
    return np.stack([samples, 0.5 * samples])


def encode(
    samples: np.ndarray, enc: Encoding, container_options: dict[str, str] | None = None
) -> bytes:
    """Write 16 kHz mono float32 [T] into ``enc``'s container/codec/rate/channels with PyAV."""
    buf = io.BytesIO()
    layout = "mono" if enc.channels == 1 else "stereo"
    with av.open(buf, mode="w", format=enc.container, options=container_options) as out:
        # ffmpeg's native vorbis encoder is flagged experimental
        options = {"strict": "experimental"} if enc.codec == "vorbis" else None
        stream = out.add_stream(enc.codec, rate=enc.rate, layout=layout, options=options)
        assert isinstance(stream, av.audio.stream.AudioStream)
        to_rate = av.AudioResampler(format="fltp", layout=layout, rate=enc.rate)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(stereo_of(samples, enc.channels), dtype=np.float32),
            format="fltp",
            layout=layout,
        )
        frame.sample_rate = SAMPLE_RATE
        for converted in [*to_rate.resample(frame), *to_rate.resample(None)]:
            converted.pts = None
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def best_correlation(decoded: np.ndarray, original: np.ndarray, max_lag: int = 1600) -> float:
    """Largest normalized correlation over lags up to ``max_lag`` samples (codec delays)."""
    n = min(decoded.size, original.size) - max_lag
    best = 0.0
    ref = original[:n]
    for lag in range(0, max_lag, 4):
        for a, b in ((decoded[lag : lag + n], ref), (decoded[:n], original[lag : lag + n])):
            best = max(best, float(np.corrcoef(a, b)[0, 1]))
    return best


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clip(speech: dict[str, list[Utterance]]) -> np.ndarray:
    """One espeak-ng German sentence, float32 [T] at 16 kHz."""
    samples, rate = sf.read(speech["de"][1].path, dtype="float32")
    assert rate == SAMPLE_RATE
    return samples


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_decodes_each_format(name: str, clip: np.ndarray) -> None:
    enc = ENCODINGS[name]
    data = encode(clip, enc)
    decoded = decode_audio(data, filename=f"speech.{enc.container}")

    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.original_rate == enc.rate
    assert decoded.channels == enc.channels
    assert decoded.format == enc.expect_format
    assert decoded.codec == enc.expect_codec
    assert decoded.duration == pytest.approx(decoded.samples.size / SAMPLE_RATE)
    original = clip if enc.channels == 1 else 0.75 * clip  # mean of x and x/2
    # Lossy codecs pad a few frames (mp3/aac priming): within 100 ms.
    assert abs(decoded.duration - clip.size / SAMPLE_RATE) < 0.1
    assert best_correlation(decoded.samples, original) > 0.9
    assert np.abs(decoded.samples).max() <= 1.0


def test_lossless_16k_mono_wav_is_exact(clip: np.ndarray) -> None:
    data = wav_bytes(clip)
    decoded = decode_audio(data)
    expected = np.round(clip * 32767).astype(np.int16).astype(np.float32) / 32768
    np.testing.assert_allclose(decoded.samples, expected, atol=1 / 32768)
    assert (decoded.format, decoded.original_rate, decoded.channels) == ("wav", SAMPLE_RATE, 1)


def test_format_comes_from_the_bytes_not_the_name(clip: np.ndarray) -> None:
    data = encode(clip, ENCODINGS["mp3-44k-stereo"])
    decoded = decode_audio(data, filename="lies.wav", content_type="audio/wav")
    assert decoded.format == "mp3"
    assert sniff_format(data[:64]) == "mp3"


def test_accepts_a_spooled_upload_file(clip: np.ndarray) -> None:
    data = encode(clip, ENCODINGS["ogg-opus-48k"])
    with tempfile.SpooledTemporaryFile(max_size=1024) as f:  # rolls over to disk, like Starlette
        f.write(data)
        f.seek(0)
        decoded = decode_audio(f)  # type: ignore[arg-type]
    assert abs(decoded.duration - clip.size / SAMPLE_RATE) < 0.1


def test_downmix_is_the_channel_mean() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    opposite = decode_audio(wav_bytes(np.stack([x, -x], axis=1), subtype="FLOAT"))
    assert np.abs(opposite.samples).max() < 1e-6
    half = decode_audio(wav_bytes(np.stack([x, np.zeros_like(x)], axis=1), subtype="FLOAT"))
    np.testing.assert_allclose(half.samples, x / 2, atol=1e-6)


def test_long_stereo_decodes_in_blocks_without_holding_the_original() -> None:
    # 60 s of stereo 48 kHz: as float32 [2, T] it is 23 MB, its 48 kHz mono 11.5 MB; decoding
    # block by block holds only the 16 kHz result (3.8 MB) and a second of input.
    rate = 48_000
    x = (0.3 * np.sin(np.arange(60 * rate) / 7)).astype(np.float32)
    data = wav_bytes(np.stack([x, 0.5 * x], axis=1), rate=rate)
    tracemalloc.start()
    try:
        decoded = decode_audio(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * decoded.samples.nbytes
    # Block-wise downmix + streaming resample equals doing it on the whole signal at once.
    ints = np.frombuffer(data[44:], dtype="<i2").reshape(-1, 2).astype(np.float32) / 32768
    whole = resample(ints.mean(axis=1, dtype=np.float32), rate)
    np.testing.assert_allclose(decoded.samples, whole, atol=1e-6)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resample_keeps_a_tone(rate: int) -> None:
    t = np.arange(2 * rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = resample(tone, rate)
    assert abs(out.size - 2 * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out[1000:-1000]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (out.size - 2000)
    assert abs(peak_hz - 1000) < 5
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


# ---------------------------------------------------------------------------- errors


def assert_openai_error(exc: AudioError, status: int, param: str = "file") -> None:
    error = from_audio_error(exc)
    body = error.body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["message"]
    assert error.status == status


def test_empty_upload_is_400() -> None:
    with pytest.raises(EmptyAudioError) as info:
        decode_audio(b"", filename="a.wav")
    assert_openai_error(info.value, 400)


def test_wav_without_frames_is_400() -> None:
    with pytest.raises(EmptyAudioError):
        decode_audio(wav_bytes(np.zeros(0, dtype=np.float32)))


@pytest.mark.parametrize(
    "data",
    [
        b"this is a text file, not audio\n" * 20,
        bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunkjunk",  # wav magic, broken chunks
        b"OggS" + b"\x00" * 200,
        b"\x1a\x45\xdf\xa3" + b"\x01" * 100,
    ],
    ids=["text", "noise", "bad-wav", "bad-ogg", "bad-webm"],
)
def test_undecodable_is_415(data: bytes) -> None:
    with pytest.raises(UnsupportedAudioError) as info:
        decode_audio(data, filename="upload.bin", content_type="application/octet-stream")
    assert_openai_error(info.value, 415)
    assert "upload.bin" in info.value.message


def video_mp4(samples: np.ndarray | None) -> bytes:
    """A 1 s 32x32 mpeg4 video, with ``samples`` (16 kHz mono) as an aac track if given."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        video = out.add_stream("mpeg4", rate=10)
        assert isinstance(video, av.video.stream.VideoStream)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = None
        if samples is not None:
            audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            assert isinstance(audio, av.audio.stream.AudioStream)
        for _ in range(10):
            image = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in video.encode(image):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if audio is not None and samples is not None:
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                out.mux(packet)
    return buf.getvalue()


def test_video_file_decodes_its_audio_track(clip: np.ndarray) -> None:
    decoded = decode_audio(video_mp4(clip), filename="clip.mp4", content_type="video/mp4")
    assert decoded.codec == "aac"
    assert abs(decoded.duration - clip.size / SAMPLE_RATE) < 0.1
    assert best_correlation(decoded.samples, clip) > 0.9


def test_video_without_audio_is_415() -> None:
    with pytest.raises(UnsupportedAudioError, match="no audio stream"):
        decode_audio(video_mp4(None), filename="silent.mp4")


def test_corrupted_middle_of_mp3_still_decodes_or_415(clip: np.ndarray) -> None:
    data = bytearray(encode(clip, ENCODINGS["mp3-44k-stereo"]))
    rng = np.random.default_rng(1)
    middle = slice(len(data) // 3, 2 * len(data) // 3)
    data[middle] = bytes(rng.integers(0, 256, middle.stop - middle.start, dtype=np.uint8))
    # Either outcome is an answer a client can act on; a crash or 500 is not.
    try:
        decoded = decode_audio(bytes(data))
    except UnsupportedAudioError:
        return
    assert np.isfinite(decoded.samples).all()
    assert decoded.duration <= clip.size / SAMPLE_RATE + 0.1


@pytest.mark.parametrize(
    "name", ["wav-44k-stereo", "mp3-44k-stereo", "ogg-opus-48k", "flac-48k-mono"]
)
def test_truncated_file_keeps_what_decodes(name: str, clip: np.ndarray) -> None:
    longer = np.tile(clip, 3)  # ~5.5 s: ogg pages hold ~1 s, half a short file may hold none
    data = encode(longer, ENCODINGS[name])
    decoded = decode_audio(data[: len(data) // 2])
    full = longer.size / SAMPLE_RATE
    assert 0.25 * full < decoded.duration < 0.75 * full


@pytest.mark.parametrize("name", ["wav-44k-stereo", "m4a-aac-44k", "webm-opus-48k-stereo"])
def test_file_cut_inside_the_header_is_415(name: str, clip: np.ndarray) -> None:
    data = encode(clip, ENCODINGS[name])
    with pytest.raises((UnsupportedAudioError, EmptyAudioError)):
        decode_audio(data[:30])


def test_m4a_without_its_index_is_415(clip: np.ndarray) -> None:
    # mp4 keeps its index (moov) at the end when written by PyAV: half a file has no index.
    data = encode(clip, ENCODINGS["m4a-aac-44k"])
    with pytest.raises(UnsupportedAudioError):
        decode_audio(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name", ["wav-44k-stereo", "flac-48k-mono", "mp3-44k-stereo", "webm-opus-48k-stereo"]
)
def test_over_the_duration_limit_is_413(name: str, clip: np.ndarray) -> None:
    data = encode(clip, ENCODINGS[name])
    limit = clip.size / SAMPLE_RATE / 2
    with pytest.raises(AudioTooLongError) as info:
        decode_audio(data, max_duration=limit)
    assert_openai_error(info.value, 413)
    assert decode_audio(data, max_duration=2 * limit + 0.5).duration > limit


def test_stream_without_duration_stops_decoding_at_the_limit() -> None:
    # A live webm (what browsers' MediaRecorder uploads) declares no duration: the guard
    # must trip while decoding, right after the limit, not after decoding everything.
    long = np.tile(np.sin(np.arange(SAMPLE_RATE) / 5).astype(np.float32) * 0.3, 120)  # 120 s
    data = encode(long, ENCODINGS["webm-opus-48k-stereo"], container_options={"live": "1"})
    with av.open(io.BytesIO(data), mode="r") as probe:
        assert probe.duration is None
    with pytest.raises(AudioTooLongError) as info:
        decode_audio(data, max_duration=10)
    seen = re.search(r"at least ([\d.]+) s", info.value.message)
    assert seen and 10 <= float(seen.group(1)) < 10.5


def test_declared_duration_rejects_before_decoding() -> None:
    long = np.tile(np.sin(np.arange(SAMPLE_RATE) / 5).astype(np.float32) * 0.3, 120)  # 120 s
    data = encode(long, ENCODINGS["ogg-opus-48k"])
    with pytest.raises(AudioTooLongError) as info:
        decode_audio(data, max_duration=10)
    seen = re.search(r"at least ([\d.]+) s", info.value.message)
    assert seen and float(seen.group(1)) > 100  # from the container, nothing decoded


# ---------------------------------------------------------------------------- raw PCM


def test_pcm_16k_mono_is_exact() -> None:
    ints = np.array([0, 1000, -1000, 32767, -32768], dtype="<i2")
    decoded = decode_pcm(ints.tobytes(), SAMPLE_RATE)
    np.testing.assert_array_equal(decoded.samples, ints.astype(np.float32) / 32768)
    assert (decoded.format, decoded.channels, decoded.original_rate) == ("pcm_s16le", 1, 16_000)


def test_pcm_stereo_8k_is_downmixed_and_resampled(clip: np.ndarray) -> None:
    at_8k = resample(clip, SAMPLE_RATE, 8_000)
    ints = np.round(np.stack([at_8k, at_8k], axis=1) * 32767).astype("<i2")  # [T, 2] interleaved
    decoded = decode_pcm(ints.tobytes(), 8_000, channels=2)
    assert decoded.channels == 2
    assert abs(decoded.duration - clip.size / SAMPLE_RATE) < 0.01
    assert best_correlation(decoded.samples, clip, max_lag=64) > 0.9


@pytest.mark.parametrize(
    ("rate", "channels", "param"),
    [
        (0, 1, "sample_rate"),
        (-16000, 1, "sample_rate"),
        (10**7, 1, "sample_rate"),
        (16000, 0, "channels"),
    ],
)
def test_pcm_bad_parameters_are_400(rate: int, channels: int, param: str) -> None:
    with pytest.raises(InvalidAudioParameterError) as info:
        decode_pcm(b"\x00\x00" * 100, rate, channels)
    assert_openai_error(info.value, 400, param=param)


def test_pcm_errors() -> None:
    with pytest.raises(EmptyAudioError):
        decode_pcm(b"", SAMPLE_RATE)
    with pytest.raises(UnsupportedAudioError):
        decode_pcm(b"\x00\x00\x00", SAMPLE_RATE)  # half a sample
    with pytest.raises(UnsupportedAudioError):
        decode_pcm(b"\x00\x00" * 3, SAMPLE_RATE, channels=2)  # half a stereo frame
    with pytest.raises(AudioTooLongError):
        decode_pcm(b"\x00\x00" * SAMPLE_RATE * 3, SAMPLE_RATE, max_duration=2.0)
