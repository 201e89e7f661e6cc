"""Waveform augmentation for synthetic speech: speed, reverberation, noise, the channel
(telephone band, lossy codecs) and gain.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a corpus
built from one seed is the same on every machine. The channel effects came after v1's
(speed, reverb, noise, gain): their random numbers are drawn after v1's, so a v1 config
(channel probabilities 0) still builds v1's audio sample for sample.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; each effect is drawn independently per utterance."""

    speed_prob: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)  # >1: faster and higher (resampling)
    reverb_prob: float = 0.3
    rt60_range: tuple[float, float] = (0.15, 0.6)  # seconds for the tail to fall by 60 dB
    noise_prob: float = 0.6
    snr_db_range: tuple[float, float] = (5.0, 30.0)
    gain_prob: float = 0.8
    gain_db_range: tuple[float, float] = (-12.0, 6.0)
    # The channel, after the room and its noise: a telephone line (300-3400 Hz, 8 kHz and
    # back), then one lossy codec round trip (``CODECS``), each drawn independently.
    telephone_prob: float = 0.0
    codec_prob: float = 0.0
    codecs: tuple[str, ...] = ("mulaw", "alaw", "amr_nb", "g722", "mp3", "opus", "aac")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.codecs) - set(CODECS))
        if unknown:
            raise ValueError(f"unknown codecs {unknown}: choose from {sorted(CODECS)}")
        if self.codec_prob > 0:
            if not self.codecs:
                raise ValueError("codec_prob > 0 needs at least one codec")
            check_encoders(self.codecs)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> AugmentConfig:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)  # type: ignore[arg-type]


def speed_perturb(samples: np.ndarray, factor: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``[T]`` ``factor`` times faster (tempo and pitch, as Kaldi's speed perturbation);
    the result has ``round(T / factor)`` samples."""
    if abs(factor - 1.0) < 1e-6 or samples.size == 0:
        return samples
    # Treat the signal as if recorded at rate*factor and resample it to rate.
    orig = round(rate * factor / 10) * 10
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), orig, rate)
    return out.numpy().astype(np.float32)


def synthetic_rir(rt60: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A room impulse response ``[L]``: direct path plus exponentially decaying noise."""
    length = max(1, int(rt60 * rate))
    t = np.arange(length) / rate
    decay = np.exp(-6.9078 * t / rt60)  # ln(1000): -60 dB at rt60
    tail = rng.standard_normal(length) * decay
    predelay = int(rng.uniform(0.002, 0.01) * rate)  # first reflections arrive a bit later
    tail[:predelay] = 0.0
    rir = 0.5 * tail / (np.sqrt(np.sum(tail**2)) + 1e-9)  # tail energy below the direct path
    rir[0] = 1.0
    return rir.astype(np.float32)


def reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve ``[T]`` with ``rir`` ``[L]``; keeps ``T`` samples and the input's peak level."""
    if samples.size == 0:
        return samples
    out = AF.fftconvolve(torch.from_numpy(samples), torch.from_numpy(rir))[: samples.size]
    wet = out.numpy()
    peak_in, peak_out = float(np.abs(samples).max()), float(np.abs(wet).max())
    if peak_out > 0:
        wet = wet * (peak_in / peak_out)
    return wet.astype(np.float32)


def colored_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-RMS noise ``[n]`` with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    white = rng.standard_normal(n)
    if exponent == 0 or n < 2:
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1]
        noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(
    samples: np.ndarray, snr_db: float, rng: np.random.Generator, exponent: float = 0.0
) -> np.ndarray:
    """Add noise at ``snr_db`` relative to the signal's mean power."""
    power = float(np.mean(samples.astype(np.float64) ** 2))
    if power == 0.0 or samples.size == 0:
        return samples
    noise = colored_noise(samples.size, rng, exponent)
    scale = np.sqrt(power / 10 ** (snr_db / 10))
    return (samples + scale * noise).astype(np.float32)


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db``; a result that would clip is scaled down to a 0.99 peak instead."""
    out = samples * np.float32(10 ** (gain_db / 20))
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > 0.99:
        out = out * np.float32(0.99 / peak)
    return out.astype(np.float32)


def telephone(samples: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A telephone line: band-limited to 300-3400 Hz, sampled at 8 kHz and back to ``rate``;
    keeps ``T`` samples."""
    if samples.size == 0:
        return samples
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    narrow = AF.resample(x, rate, 8000)  # its anti-alias filter cuts near 4 kHz
    # Two biquads each side give a ~24 dB/octave slope, like a line's band-pass filter.
    for _ in range(2):
        narrow = AF.highpass_biquad(narrow, 8000, 300.0)
        narrow = AF.lowpass_biquad(narrow, 8000, 3400.0)
    out = AF.resample(narrow, 8000, rate).numpy()
    return _fit(out, samples.size)


@dataclass(frozen=True)
class Codec:
    """A lossy codec PyAV's FFmpeg encodes: container, encoder, sample rate, bit rates."""

    container: str
    encoder: str
    rate: int
    bit_rates: tuple[int, ...] = (0,)  # 0: the codec has one rate
    # Samples (at ``rate``) the decoded signal lags the input by, dropped so that the words
    # stay where the transcript's audio had them (measured by cross-correlation with
    # PyAV 18's FFmpeg; mp3 and opus decoders remove their own priming).
    delay: int = 0


CODECS: dict[str, Codec] = {
    "mulaw": Codec("wav", "pcm_mulaw", 8000),  # G.711, telephone
    "alaw": Codec("wav", "pcm_alaw", 8000),
    "amr_nb": Codec("amr", "libopencore_amrnb", 8000, (4750, 7950, 12200), delay=40),  # mobile
    "g722": Codec("wav", "g722", 16000, delay=22),  # wide-band VoIP
    "mp3": Codec("mp3", "libmp3lame", 16000, (16000, 24000, 32000, 48000)),
    "opus": Codec("ogg", "libopus", 16000, (8000, 12000, 16000, 24000)),
    "aac": Codec("adts", "aac", 16000, (24000, 32000, 48000), delay=1024),  # ADTS: no skip
}


def check_encoders(codecs: tuple[str, ...]) -> None:
    """Fail before a corpus is made, not halfway through it, when PyAV's FFmpeg build lacks
    an encoder that ``codecs`` (``CODECS`` names) need."""
    missing = []
    for name in codecs:
        try:
            av.Codec(CODECS[name].encoder, "w")
        except av.codec.codec.UnknownCodecError:
            missing.append(f"{name} ({CODECS[name].encoder})")
    if missing:
        raise ValueError(
            f"PyAV {av.__version__} cannot encode {', '.join(missing)}: install the av release "
            "pyproject.toml pins (`make setup`), or leave these codecs out of `codecs`"
        )


def _fit(samples: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad to ``length`` (resampling and codec frames change it by a few)."""
    out = np.zeros(length, dtype=np.float32)
    n = min(length, samples.size)
    out[:n] = samples[:n]
    return out


def codec_round_trip(
    samples: np.ndarray, codec: str, bit_rate: int = 0, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Encode ``[T]`` with ``codec`` (a ``CODECS`` name) in memory and decode it again, at
    the codec's sample rate; returns ``T`` samples at ``rate``, the codec's delay removed."""
    if samples.size == 0:
        return samples
    spec = CODECS[codec]
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if spec.rate != rate:
        x = AF.resample(x, rate, spec.rate)
    pcm = (np.clip(x.numpy(), -1.0, 1.0) * 32767).astype(np.int16)[None, :]
    buf = io.BytesIO()
    with av.open(buf, "w", format=spec.container) as out:
        stream = out.add_stream(spec.encoder, rate=spec.rate, layout="mono")
        assert isinstance(stream, av.AudioStream)  # an audio encoder gives an audio stream
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = spec.rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buf.seek(0)
    pieces = []
    with av.open(buf, "r") as inp:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.rate)
        for decoded in inp.decode(inp.streams.audio[0]):
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(decoded)]
    y = torch.from_numpy(np.concatenate(pieces)[spec.delay :].astype(np.float32))
    if spec.rate != rate:
        y = AF.resample(y, spec.rate, rate)
    return _fit(y.numpy(), samples.size)


def augment(
    samples: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
    rate: int = SAMPLE_RATE,
) -> tuple[np.ndarray, dict[str, float]]:
    """Speed -> reverb -> noise -> telephone -> codec -> gain on mono float32 ``[T]``;
    returns the new signal ``[T']`` and what was applied (for the manifest summary)."""
    config = config or AugmentConfig()
    applied: dict[str, float] = {}
    out = samples.astype(np.float32)
    # Draw every number whether or not the effect applies: the stream of random numbers
    # then does not depend on earlier coin flips.
    flips = rng.random(4)
    speed = rng.uniform(*config.speed_range)
    rt60 = rng.uniform(*config.rt60_range)
    snr = rng.uniform(*config.snr_db_range)
    color = float(rng.choice([0.0, 1.0, 2.0]))
    gain = rng.uniform(*config.gain_db_range)
    if flips[0] < config.speed_prob:
        out = speed_perturb(out, speed, rate)
        applied["speed"] = round(speed, 3)
    if flips[1] < config.reverb_prob:
        out = reverberate(out, synthetic_rir(rt60, rng, rate))
        applied["rt60"] = round(rt60, 3)
    if flips[2] < config.noise_prob:
        out = add_noise(out, snr, rng, color)
        applied["snr_db"] = round(snr, 1)
    # The channel's numbers come after every draw v1 made (see the module docstring).
    channel = rng.random(2)
    codec = config.codecs[int(rng.integers(len(config.codecs)))] if config.codecs else ""
    bit_rates = CODECS[codec].bit_rates if codec else (0,)
    bit_rate = bit_rates[int(rng.integers(len(bit_rates)))]
    if channel[0] < config.telephone_prob:
        out = telephone(out, rate)
        applied["telephone"] = 1.0
    if codec and channel[1] < config.codec_prob:
        out = codec_round_trip(out, codec, bit_rate, rate)
        applied[f"codec_{codec}"] = float(bit_rate)
    if flips[3] < config.gain_prob:
        out = apply_gain(out, gain)
        applied["gain_db"] = round(gain, 1)
    else:
        out = apply_gain(out, 0.0)  # keep the peak within range after noise
    return out, applied
