"""Cost of cutting long audio at silences (service/vad.py), per minute of audio.

    python -m bench.vad [--minutes 1] [--repeats 5] [--threads 1]

The audio: espeak-ng sentences in four languages with 0.3-1.2 s silences between them,
repeated to ``--minutes``. Timed (median of ``--repeats``): silero-vad run as one
sequential pass (``audio_forward`` on one row, what silero's own ``get_speech_timestamps``
costs), the batched rows lass uses (``SileroVad.speech_probabilities``), and the whole plan
(silences + ``plan_pieces`` with 30 s pieces), and the share of VAD frames whose
speech/non-speech call (p >= 0.5) differs between the batched rows and one pass.
``--threads`` torch threads (the service's VAD thread inherits torch's thread count).
The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from model.config import FRAME_STRIDE, SAMPLE_RATE
from service.vad import SileroVad, plan_pieces

SENTENCES = (
    ("en", "the quick brown fox jumps over the lazy dog near the river bank"),
    ("de", "guten morgen und willkommen zu unserer kleinen reise durch die stadt"),
    ("es", "el perro come pan en la cocina mientras llueve afuera"),
    ("it", "il sole splende oggi sopra le colline e il mare"),
)


def speech_audio(minutes: float, seed: int = 0) -> np.ndarray:
    """``minutes`` of espeak-ng sentences with silences between: float32 ``[T]`` 16 kHz."""
    from model.train.data.espeak import Voice, synthesize  # espeak-ng is only needed here

    clips = [synthesize(text, Voice(lang)) for lang, text in SENTENCES]
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total, need = 0, int(minutes * 60 * SAMPLE_RATE)
    while total < need:
        clip = clips[len(parts) // 2 % len(clips)]
        gap = np.zeros(int(rng.uniform(0.3, 1.2) * SAMPLE_RATE), dtype=np.float32)
        parts += [clip, gap]
        total += len(clip) + len(gap)
    return np.concatenate(parts)[:need]


def median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    audio = speech_audio(args.minutes)
    minutes = len(audio) / SAMPLE_RATE / 60
    start = time.perf_counter()
    vad = SileroVad.load()
    load_s = time.perf_counter() - start
    whole = torch.from_numpy(audio)[None]
    vad.speech_probabilities(audio[: 10 * SAMPLE_RATE])  # first call compiles the graph

    def sequential() -> None:
        with torch.inference_mode():
            vad.model.audio_forward(whole, SAMPLE_RATE)

    window = 30 * SAMPLE_RATE
    figures = {
        "load_s": load_s,
        "sequential_s_per_min": median_s(sequential, args.repeats) / minutes,
        "batched_s_per_min": median_s(lambda: vad.speech_probabilities(audio), args.repeats)
        / minutes,
        "plan_s_per_min": median_s(
            lambda: plan_pieces(
                len(audio), vad.silences(audio), window, 2 * SAMPLE_RATE, FRAME_STRIDE
            ),
            args.repeats,
        )
        / minutes,
    }
    with torch.inference_mode():
        one_pass = vad.model.audio_forward(whole, SAMPLE_RATE)[0].numpy()
    batched = vad.speech_probabilities(audio)
    figures["frames_differing"] = float(np.mean((one_pass >= 0.5) != (batched >= 0.5)))
    pieces = plan_pieces(len(audio), vad.silences(audio), window, 2 * SAMPLE_RATE, FRAME_STRIDE)
    print(f"{minutes:.2f} min of speech, {args.threads} torch thread(s), {len(pieces)} pieces")
    for name, value in list(figures.items())[:4]:
        print(f"  {name:24s} {value * 1000:8.1f} ms")
    print(
        "  speech/non-speech frames differing, batched vs one pass: "
        f"{figures['frames_differing']:.2%}"
    )
    figures["pieces"] = len(pieces)
    figures["minutes"] = minutes
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
