"""The trainer reads audio through the service's front end (issue 12, point 1): a file gives
the trainer (``load_audio``, what ``lass train evaluate`` and training read) exactly the
samples the service decodes from the same bytes, and the downmix is the channel mean.

Before the shared front end the trainer read mp3 through libsndfile (another mp3 decoder than
the service's FFmpeg), resampled with torchaudio's sinc filter and, for what only FFmpeg
reads (m4a/aac, webm, ...), downmixed with swresample's mono layout (each channel x
1/sqrt(2)), and it let FFmpeg probe any file: each test here failed there.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

import model.audio
from model.audio import SAMPLE_RATE, decode_audio
from model.train.data import audio_io
from model.train.data.audio_io import AudioError, audio_info, load_audio, read_audio

RATE = 44_100


def stereo_speechlike(seconds: float = 1.5, rate: int = RATE) -> np.ndarray:
    """float32 [2, T]: a gliding harmonic tone, the right channel at another level with a
    second partial, so the two channels differ."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 60 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    left = 0.4 * np.sin(phase) + 0.1 * np.sin(3 * phase)
    right = 0.25 * np.sin(phase) + 0.15 * np.sin(7 * phase)
    return np.stack([left, right]).astype(np.float32)


CODECS = {".mp3": "libmp3lame", ".m4a": "aac"}


def write_stereo(path: Path, channels: np.ndarray, rate: int = RATE) -> bytes:
    """Encode float32 [2, T] as stereo mp3 or m4a (by ``path``'s suffix) at ``rate``;
    returns the file's bytes."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODECS[path.suffix], rate=rate, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(channels), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path.read_bytes()


def test_stereo_mp3_gives_the_trainer_the_samples_the_service_decodes(tmp_path: Path) -> None:
    data = write_stereo(tmp_path / "clip.mp3", stereo_speechlike())
    served = decode_audio(data).samples
    trained = load_audio(tmp_path / "clip.mp3")
    assert served.size > SAMPLE_RATE
    np.testing.assert_array_equal(trained, served)


def test_stereo_m4a_gives_the_same_samples_too(tmp_path: Path) -> None:
    data = write_stereo(tmp_path / "clip.m4a", stereo_speechlike(rate=48_000), rate=48_000)
    np.testing.assert_array_equal(load_audio(tmp_path / "clip.m4a"), decode_audio(data).samples)


def test_stereo_wav_at_48k_gives_the_same_samples_too(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, stereo_speechlike(rate=48_000).T, 48_000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path), decode_audio(path.read_bytes()).samples)


def decoded_channels(path: Path) -> np.ndarray:
    """FFmpeg's own decode of a file, every channel: float32 [C, T] at the file's rate."""
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def test_downmix_is_the_mean_without_a_1_over_sqrt2_scale(tmp_path: Path) -> None:
    # Both channels the same tone (AAC: FFmpeg alone reads it): their mean is that channel;
    # swresample's mono layout made it sqrt(2) times louder on the trainer's FFmpeg path.
    path = tmp_path / "same.m4a"
    t = np.arange(2 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_stereo(path, np.stack([tone, tone]))
    left, right = decoded_channels(path)  # AAC's mid/side coding: equal to ~1e-3
    mean = (left + right) / 2
    samples, rate = read_audio(path)
    assert rate == RATE
    np.testing.assert_allclose(samples, mean, atol=1e-6)
    # At 16 kHz the level is the mean's too (the resampler keeps a 440 Hz tone).
    rms_16k = float(np.sqrt(np.mean(load_audio(path)[4000:-4000] ** 2)))
    rms_mean = float(np.sqrt(np.mean(mean[11_025:-11_025] ** 2)))
    assert rms_16k == pytest.approx(rms_mean, rel=0.01)


def test_one_audio_error_class_naming_the_file(tmp_path: Path) -> None:
    assert audio_io.AudioError is model.audio.AudioError
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all\n" * 10)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert info.value.path == path and str(info.value).startswith(f"{path}: ")
    assert str(path) not in info.value.message  # what a client would see names no path
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


def test_files_outside_the_allow_list_are_refused_not_followed(tmp_path: Path) -> None:
    # A concat list names another file (relative to the list); FFmpeg's probing would open
    # and decode it.
    sf.write(tmp_path / "secret.wav", stereo_speechlike().T, RATE, subtype="PCM_16")
    listing = tmp_path / "clip.ffconcat"
    listing.write_text("ffconcat version 1.0\nfile secret.wav\n")
    with pytest.raises(AudioError):
        load_audio(listing)
    with pytest.raises(AudioError):
        audio_info(listing)


def test_audio_info_reads_compressed_headers(tmp_path: Path) -> None:
    write_stereo(tmp_path / "clip.mp3", stereo_speechlike(seconds=2.0))
    info = audio_info(tmp_path / "clip.mp3")
    assert (info.sample_rate, info.channels) == (RATE, 2)
    assert info.duration == pytest.approx(2.0, abs=0.1)
