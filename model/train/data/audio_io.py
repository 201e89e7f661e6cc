"""Audio files in and out for the trainer.

Reading goes through the service's front end (``model.audio``): the same containers, the
same downmix (mean of the channels) and the same resampler to 16 kHz, so the trainer and
``lass train evaluate`` hear what the service hears. Writing (``write_audio``) encodes
test and import fixtures.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from model.audio import (
    SAMPLE_RATE,
    AudioError,
    UnsupportedAudioError,
    decode_file,
    open_container,
    sniff_source,
)

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "read_audio",
    "write_audio",
]


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
    """Header facts (rate, channels, length) without decoding the whole file where possible.

    Only for what ``model.audio`` decodes (its allowed containers, sniffed from the bytes;
    others: AudioError): headers through libsndfile where it reads them, else through the
    container's one FFmpeg demuxer.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError("no such file", path=path)
    try:
        with path.open("rb") as f:
            _, fmt = sniff_source(f)
            if fmt is None:
                raise UnsupportedAudioError("not an audio format lass reads")
            try:
                info = sf.info(f)
            except sf.LibsndfileError:
                f.seek(0)
                return _pyav_info(f, fmt)
        truncated = _wav_truncated(path) if info.format == "WAV" else False
        return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), truncated)
    except AudioError as exc:
        exc.path = path
        raise
    except av.FFmpegError as exc:
        raise AudioError(f"unreadable audio ({exc.strerror or 'invalid data'})", path=path) from exc


def _pyav_info(source: BinaryIO, fmt: str) -> AudioInfo:
    with open_container(source, fmt) as container:
        if not container.streams.audio:
            raise UnsupportedAudioError("no audio stream")
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


def read_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Decode a file to float32 mono ``[T]`` at its own sample rate (channels averaged,
    ``model.audio``); AudioError names the file."""
    decoded = decode_file(path, target_rate=None)
    return decoded.samples, decoded.sample_rate


def load_audio(path: Path | str, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode, downmix and resample: float32 mono ``[T]`` at ``target_rate``, exactly the
    samples the service decodes from the same file (``model.audio.decode_file``)."""
    return decode_file(path, target_rate=target_rate).samples


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
        raise AudioError(f"no encoder for {suffix!r}", path=path)
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
