"""Audio input cost: resampler choice and ``decode_audio`` per container, for a 4 s clip.

    python -m bench.audio_io [--seconds 4] [--repeats 30] [--threads 1]

Resampling to 16 kHz from 8/22.05/44.1/48 kHz with ``torchaudio.functional.resample``
against PyAV's swresample (what ``model.audio.resample`` and every decoder use), then the whole
``decode_audio`` (sniff, demux, decode, downmix, resample) for every format the service
accepts. Medians over ``--repeats`` runs, one thread (the service decodes in a thread
pool, one upload per thread). The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import av
import numpy as np

from model.audio import SAMPLE_RATE, decode_audio, resample


@dataclass(frozen=True)
class Format:
    """A test file to write with PyAV: container, codec, sample rate, channels."""

    name: str
    container: str
    codec: str
    rate: int
    channels: int


FORMATS = (
    Format("wav-16k-mono", "wav", "pcm_s16le", 16_000, 1),
    Format("wav-44k-stereo", "wav", "pcm_s16le", 44_100, 2),
    Format("flac-48k-mono", "flac", "flac", 48_000, 1),
    Format("mp3-44k-stereo", "mp3", "libmp3lame", 44_100, 2),
    Format("ogg-opus-48k", "ogg", "libopus", 48_000, 1),
    Format("webm-opus-48k-stereo", "webm", "libopus", 48_000, 2),
    Format("m4a-aac-44k", "ipod", "aac", 44_100, 1),
)


def encode(samples: np.ndarray, fmt: Format) -> bytes:
    """16 kHz mono float32 [T] -> a file in ``fmt`` (second channel at half level)."""
    layout = "mono" if fmt.channels == 1 else "stereo"
    planes = samples[None, :] if fmt.channels == 1 else np.stack([samples, 0.5 * samples])
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt.container) as out:
        stream = out.add_stream(fmt.codec, rate=fmt.rate, layout=layout)
        assert isinstance(stream, av.audio.stream.AudioStream)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(planes, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = SAMPLE_RATE
        to_rate = av.AudioResampler(format="fltp", layout=layout, rate=fmt.rate)
        for converted in [*to_rate.resample(frame), *to_rate.resample(None)]:
            converted.pts = None
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Float32 [T] at 16 kHz: harmonic bursts with pauses (no espeak-ng needed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.3).astype(np.float32)
    noise = 0.02 * rng.standard_normal(t.size)
    return (0.3 * voiced * envelope + noise).astype(np.float32)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: kernels, codec tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(seconds: float, repeats: int) -> dict[str, dict[str, float]]:
    import torch
    import torchaudio.functional as AF

    clip = speech_like(seconds)
    resampling: dict[str, float] = {}
    for rate in (8_000, 22_050, 44_100, 48_000):
        source = resample(clip, SAMPLE_RATE, rate)
        tensor = torch.from_numpy(source)
        ta = median_ms(partial(AF.resample, tensor, rate, SAMPLE_RATE), repeats)
        swr = median_ms(partial(resample, source, rate), repeats)
        resampling[f"torchaudio_{rate}_ms"] = ta
        resampling[f"pyav_{rate}_ms"] = swr
        resampling[f"torchaudio_over_pyav_{rate}"] = ta / swr
    decoding: dict[str, float] = {}
    for fmt in FORMATS:
        data = encode(clip, fmt)
        decoding[f"{fmt.name}_ms"] = median_ms(partial(decode_audio, data), repeats)
        decoding[f"{fmt.name}_kib"] = len(data) / 1024
    return {"resample": resampling, "decode": decoding}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lass bench audio-io", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    result = run(args.seconds, args.repeats)
    print(f"{args.seconds:g} s clip, median of {args.repeats}, {args.threads} torch thread(s)")
    print(f"{'resample to 16 kHz from':<24}{'torchaudio ms':>14}{'PyAV ms':>10}{'ratio':>8}")
    r = result["resample"]
    for rate in (8_000, 22_050, 44_100, 48_000):
        print(
            f"{rate:<24}{r[f'torchaudio_{rate}_ms']:>14.2f}{r[f'pyav_{rate}_ms']:>10.2f}"
            f"{r[f'torchaudio_over_pyav_{rate}']:>8.2f}"
        )
    print(f"{'decode_audio':<24}{'ms':>14}{'KiB':>10}{'% of clip':>10}")
    d = result["decode"]
    for fmt in FORMATS:
        ms = d[f"{fmt.name}_ms"]
        share = 100 * ms / (1000 * args.seconds)
        print(f"{fmt.name:<24}{ms:>14.2f}{d[f'{fmt.name}_kib']:>10.1f}{share:>10.2f}")
    print(json.dumps({"seconds": args.seconds, "repeats": args.repeats, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
