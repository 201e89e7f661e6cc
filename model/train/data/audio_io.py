"""Audio files in and out: soundfile first, PyAV (FFmpeg) for what libsndfile cannot read.

Everything returned is float32 mono; ``load_audio`` also resamples to 16 kHz.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be read; the message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says."""

    sample_rate: int
    channels: int
    frames: int  # samples per channel
    truncated: bool = False  # the container declares more data than the file holds

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _wav_truncated(path: Path) -> bool:
    """True when a RIFF/WAVE file's ``data`` chunk declares more bytes than the file has."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return False
            cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                # 0xFFFFFFFF / 0: streaming writers that never patched the header.
                return length not in (0, 0xFFFFFFFF) and f.tell() + length > size
            f.seek(length + (length & 1), 1)


def audio_info(path: Path | str) -> AudioInfo:
    """Header facts (rate, channels, length) without decoding the whole file where possible."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    try:
        info = sf.info(str(path))
        truncated = _wav_truncated(path) if info.format == "WAV" else False
        return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), truncated)
    except sf.LibsndfileError:
        pass
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 1)
            if stream.duration is not None and stream.time_base is not None:
                frames = round(float(stream.duration * stream.time_base) * rate)
            elif container.duration is not None:
                frames = round(container.duration / av.time_base * rate)
            else:  # no duration in the header: decode to count
                frames = sum(fr.samples for fr in container.decode(stream))
            return AudioInfo(rate, channels, frames)
    except av.FFmpegError as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc


def read_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Decode a file to float32 mono ``[T]`` at its own sample rate (channels averaged)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)
    except sf.LibsndfileError:
        pass
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(chunks).astype(np.float32), rate


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a mono float32 signal ``[T]`` to ``target`` Hz."""
    if rate == target or samples.size == 0:
        return samples
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), rate, target)
    return out.numpy().astype(np.float32)


def load_audio(path: Path | str, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode, downmix and resample: float32 mono ``[T]`` at ``target_rate``."""
    samples, rate = read_audio(path)
    return resample(samples, rate, target_rate)


def write_audio(path: Path | str, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write mono float32 ``[T]``: WAV/FLAC/OGG through soundfile (16-bit PCM for WAV and
    FLAC), anything else (``.mp3``, ``.m4a``, ``.opus``) encoded with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".wav", ".flac"):
        sf.write(str(path), samples, rate, subtype="PCM_16")
        return
    codec = {".mp3": "libmp3lame", ".m4a": "aac", ".opus": "libopus", ".ogg": "libvorbis"}
    if suffix not in codec:
        raise AudioError(path, f"no encoder for {suffix!r}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec[suffix], rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(
            np.clip(samples, -1, 1).astype(np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
