"""model.audio's one converter: files, raw PCM uploads, stream frames and the trainer's
paths give the same samples for the same audio (the container and codec tests are in
tests/service/test_audio.py and test_hostile_audio.py, the trainer's in
tests/train/test_audio_io.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.audio import (
    SAMPLE_RATE,
    MonoConverter,
    PcmConverter,
    PcmFormat,
    decode_audio,
    decode_file,
    decode_pcm,
    resample,
)

RATE = 48_000


def stereo_pcm16(seconds: float = 1.2) -> np.ndarray:
    """int16 [T, 2]: two different tones, the right channel quieter."""
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    right = 0.2 * np.sin(2 * np.pi * 1100 * t)
    return np.round(np.stack([left, right], axis=1) * 32767).astype("<i2")


def test_files_raw_pcm_and_stream_frames_give_the_same_samples(tmp_path: Path) -> None:
    ints = stereo_pcm16()
    data = ints.tobytes()
    wav = io.BytesIO()
    sf.write(wav, ints, RATE, format="WAV", subtype="PCM_16")
    (tmp_path / "clip.wav").write_bytes(wav.getvalue())

    reference = decode_pcm(data, RATE, channels=2).samples
    stream = PcmConverter(PcmFormat.parse("pcm16", RATE, 2))
    step = RATE // 10 * 4  # 100 ms frames of stereo s16
    framed = [stream.convert(data[i : i + step]) for i in range(0, len(data), step)]
    streamed = np.concatenate([*framed, stream.flush()])

    assert reference.size == round(ints.shape[0] * SAMPLE_RATE / RATE)
    np.testing.assert_array_equal(decode_audio(wav.getvalue()).samples, reference)
    np.testing.assert_array_equal(decode_file(tmp_path / "clip.wav").samples, reference)
    np.testing.assert_allclose(streamed, reference, atol=1e-5)
    # The same as the channel mean resampled in one call.
    mean = ints.astype(np.float32).mean(axis=1) / 32768
    np.testing.assert_allclose(resample(mean, RATE), reference, atol=1e-5)


def test_native_rate_keeps_the_input_rate(tmp_path: Path) -> None:
    ints = stereo_pcm16(0.5)
    sf.write(tmp_path / "clip.flac", ints, RATE, subtype="PCM_16")
    decoded = decode_file(tmp_path / "clip.flac", target_rate=None)
    assert decoded.sample_rate == decoded.original_rate == RATE
    np.testing.assert_allclose(decoded.samples, ints.astype(np.float32).mean(axis=1) / 32768)


def test_converter_clips_and_checks_its_input() -> None:
    converter = MonoConverter(SAMPLE_RATE, 2)
    out = converter.add(np.array([[2.0, -3.0, 0.5], [2.0, -3.0, 0.1]], dtype=np.float32))
    np.testing.assert_allclose(out, [1.0, -1.0, 0.3], atol=1e-7)
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        converter.add(np.zeros((3, 4), dtype=np.float32))
