"""Raw audio frames of a stream to 16 kHz mono float32, as they arrive.

Encodings: 16-bit little-endian PCM, 32-bit little-endian float, and G.711 mu-law and A-law
(telephony; OpenAI Realtime's ``audio/pcmu`` and ``audio/pcma``).

A client names its frames' encoding, rate and channel count once (the start message, or
the Realtime session's ``input_audio_format``); every binary frame (or base64 chunk) is
then converted on arrival: interleaved channels averaged (as the REST front end does), and
resampled with swresample (PyAV), whose filter state carries over from frame to frame, so
a stream cut into frames gives the same samples as the whole signal at once, up to the
filter delay that :meth:`PcmConverter.flush` releases at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import av
import numpy as np

TARGET_RATE = 16_000
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 8

Encoding = Literal["pcm_s16le", "pcm_f32le", "mulaw", "alaw"]
# Names clients use for the two encodings (OpenAI says "pcm16").
ENCODINGS: dict[str, Encoding] = {
    "pcm_s16le": "pcm_s16le",
    "pcm16": "pcm_s16le",
    "s16le": "pcm_s16le",
    "linear16": "pcm_s16le",
    "pcm_f32le": "pcm_f32le",
    "f32le": "pcm_f32le",
    "float32": "pcm_f32le",
    "mulaw": "mulaw",
    "pcmu": "mulaw",
    "alaw": "alaw",
    "pcma": "alaw",
}
_DTYPES: dict[Encoding, np.dtype[np.generic]] = {
    "pcm_s16le": np.dtype("<i2"),
    "pcm_f32le": np.dtype("<f4"),
    "mulaw": np.dtype("u1"),
    "alaw": np.dtype("u1"),
}


def _g711_tables() -> dict[str, np.ndarray]:
    """ITU-T G.711 byte -> linear sample in [-1, 1), for mu-law and A-law (256 entries)."""
    byte = np.arange(256)
    u = ~byte & 0xFF  # mu-law bytes are sent inverted
    exponent, mantissa = (u >> 4) & 7, u & 15
    mu = (((mantissa << 3) + 0x84) << exponent) - 0x84
    mu = np.where(u & 0x80, -mu, mu)
    a = byte ^ 0x55  # A-law inverts the even bits
    exponent, mantissa = (a >> 4) & 7, a & 15
    al = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    al = np.where(a & 0x80, al, -al)
    return {"mulaw": mu.astype(np.float32) / 32768.0, "alaw": al.astype(np.float32) / 32768.0}


_G711 = _g711_tables()


class PcmFormatError(ValueError):
    """The frames' declared format is not one lass takes, or a frame does not fit it."""


@dataclass(frozen=True)
class PcmFormat:
    """How a stream's raw frames are laid out."""

    encoding: Encoding = "pcm_s16le"
    sample_rate: int = TARGET_RATE
    channels: int = 1

    @classmethod
    def parse(cls, encoding: str, sample_rate: int, channels: int = 1) -> PcmFormat:
        """Validate a client's declaration; PcmFormatError says what is accepted."""
        name = ENCODINGS.get(str(encoding).lower())
        if name is None:
            raise PcmFormatError(
                f"unsupported encoding {encoding!r}; use one of {', '.join(sorted(ENCODINGS))}"
            )
        if not isinstance(sample_rate, int) or not MIN_RATE <= sample_rate <= MAX_RATE:
            raise PcmFormatError(
                f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, "
                f"got {sample_rate!r}"
            )
        if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise PcmFormatError(f"channels must be 1 to {MAX_CHANNELS}, got {channels!r}")
        return cls(name, sample_rate, channels)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return _DTYPES[self.encoding].itemsize * self.channels

    def seconds(self, num_bytes: int) -> float:
        return num_bytes / (self.frame_bytes * self.sample_rate)


class PcmConverter:
    """Frames in the declared format -> 16 kHz mono float32, with resampler state kept."""

    def __init__(self, fmt: PcmFormat) -> None:
        self.format = fmt
        self._resampler = (
            None
            if fmt.sample_rate == TARGET_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=TARGET_RATE)
        )

    def convert(self, data: bytes) -> np.ndarray:
        """One frame's bytes -> float32 ``[n]`` at 16 kHz (``n`` may be 0 while the
        resampler fills its filter). PcmFormatError when the bytes cannot be this format."""
        fmt = self.format
        if len(data) % fmt.frame_bytes:
            raise PcmFormatError(
                f"a frame of {len(data)} bytes is not a whole number of {fmt.encoding} "
                f"samples for {fmt.channels} channel(s) ({fmt.frame_bytes} bytes each)"
            )
        raw = np.frombuffer(data, dtype=_DTYPES[fmt.encoding])
        if fmt.encoding == "pcm_s16le":
            samples = raw.astype(np.float32) / 32768.0
        elif fmt.encoding in _G711:
            samples = _G711[fmt.encoding][raw]
        else:
            samples = raw.astype(np.float32)
            if not np.isfinite(samples).all():
                raise PcmFormatError("the frame holds NaN or infinite float samples")
        if fmt.channels > 1:
            samples = samples.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)
        return self._resample(samples)

    def _resample(self, mono: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            return np.clip(mono, -1.0, 1.0)
        if len(mono) == 0:
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self.format.sample_rate
        return self._join(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still inside the resampler's filter (end of stream)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._join(self._resampler.resample(None))

    @staticmethod
    def _join(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        out = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32, copy=False)
        return np.clip(out, -1.0, 1.0)
