"""Train/serve audio skew: the default bundle's test split re-encoded as stereo 44.1 kHz mp3
(or m4a), decoded by the trainer's loader and by the service's decoder, greedy CER per language.

    python -m bench.audio_skew WORK_DIR [--bundle DIR] [--corpus DIR] [--format mp3|m4a]
        [--bit-rate 128000]

``WORK_DIR/corpus``: the bundle's test split of every language whose data can be rebuilt,
synthesized again from the corpus config in its manifest (as
tests/model/test_default_bundle.py does) and reused when already there; ``--corpus`` names
another corpus folder (its ``test.jsonl``). ``WORK_DIR/mp3``: each clip as a stereo 44.1 kHz
mp3 (libmp3lame; both channels the clip, resampled by swresample; ``m4a``: AAC, which only
FFmpeg reads). ``WORK_DIR/<format>-<front end>``: what each front end decodes from those
files, as 16 kHz float WAV (exact), then scored with
``lass train evaluate``'s code (greedy). The ``wav`` column is the test split as built
(16 kHz mono WAV): the bundle's own greedy figures.

Front ends: ``trainer`` = ``model.train.data.audio_io.load_audio`` (what training and
``lass train evaluate`` read); ``service`` = what the REST API decodes
(``model.audio.decode_audio``; ``service.audio``'s before issue 12). Since issue 12 both
are ``model.audio`` and give identical samples; copied into an older checkout, this file
measures the two front ends as they were (docs/training.md).
The last line printed is JSON with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch

from model.bundle import Bundle, read_bundle
from model.train.data.audio_io import load_audio
from model.train.data.manifest import ManifestEntry, read_manifest
from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus
from model.train.evaluate import evaluate

try:  # an older checkout: the service's own decoder
    from service.audio import decode_audio as service_decode_audio  # type: ignore[attr-defined]
except ImportError:  # since issue 12 the service decodes with model.audio
    from model.audio import decode_audio as service_decode_audio

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "default_bundle"
ENCODED_RATE = 44_100
SAMPLE_RATE = 16_000
# --format -> (PyAV encoder, file suffix)
FORMATS = {"mp3": ("libmp3lame", ".mp3"), "m4a": ("aac", ".m4a")}


def _service(path: Path) -> np.ndarray:
    return service_decode_audio(path.read_bytes()).samples


FRONT_ENDS: dict[str, Callable[[Path], np.ndarray]] = {
    "trainer": load_audio,
    "service": _service,
}


def test_split(bundle: Bundle, out: Path) -> tuple[Path, list[ManifestEntry]]:
    """(root, entries) of the bundle's test split for its rebuildable languages."""
    data = bundle.manifest["provenance"]["data"]
    sources = {lang: info["source"] for lang, info in data["corpus"]["languages"].items()}
    keep = {lang for lang, source in sources.items() if source.get("rebuildable", True)}
    full = SyntheticCorpusConfig.from_dict(data["corpus"]["config"])
    config = dataclasses.replace(
        full,
        high_resource=tuple(lang for lang in full.high_resource if lang in keep),
        low_resource=tuple(lang for lang in full.low_resource if lang in keep),
    )
    corpus = build_synthetic_corpus(config, out, only=("test",), progress=True)
    return corpus.root, corpus.test


def encode_stereo(samples: np.ndarray, path: Path, encoder: str, bit_rate: int) -> None:
    """16 kHz mono float32 [T] -> stereo 44.1 kHz ``encoder`` file at ``bit_rate`` (both
    channels alike)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mono = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), "flt", "mono")
    mono.sample_rate = SAMPLE_RATE
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=ENCODED_RATE, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = bit_rate
        upmix = av.AudioResampler(format="fltp", layout="stereo", rate=ENCODED_RATE)
        for frame in [*upmix.resample(mono), *upmix.resample(None)]:
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _relative(entry: ManifestEntry, folder: str, suffix: str) -> str:
    """The clip's path under ``folder`` with ``suffix``, relative to the work folder (an
    absolute manifest path is mirrored below ``folder`` too, never written in place)."""
    audio = Path(entry.audio)
    if audio.is_absolute():
        audio = audio.relative_to(audio.anchor)
    return str(Path(folder) / audio.with_suffix(suffix))


def run(
    work: Path,
    bundle_dir: Path,
    corpus_dir: Path | None,
    fmt: str,
    bit_rate: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    bundle = read_bundle(bundle_dir, dtype=torch.float32)
    if corpus_dir is None:
        root, entries = test_split(bundle, work / "corpus")
    else:
        root, entries = corpus_dir, read_manifest(corpus_dir / "test.jsonl")
    log(f"{len(entries)} clips from {root}")

    encoder, suffix = FORMATS[fmt]
    start = time.monotonic()
    for entry in entries:
        encoded = work / _relative(entry, fmt, suffix)
        if not encoded.is_file():
            samples, rate = sf.read(entry.audio_path(root), dtype="float32")
            assert rate == SAMPLE_RATE and samples.ndim == 1, entry.audio
            encode_stereo(samples, encoded, encoder, bit_rate)
    log(f"{fmt} encoded in {time.monotonic() - start:.0f} s")

    decoded: dict[str, dict[str, np.ndarray]] = {}
    for name, front_end in FRONT_ENDS.items():
        start = time.monotonic()
        decoded[name] = {}
        for entry in entries:
            samples = front_end(work / _relative(entry, fmt, suffix))
            decoded[name][entry.audio] = samples
            target = work / _relative(entry, f"{fmt}-{name}", ".wav")
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, samples, SAMPLE_RATE, subtype="FLOAT")  # exact float32
        log(f"{name}: decoded in {time.monotonic() - start:.1f} s")

    a, b = (decoded[name] for name in FRONT_ENDS)
    same_length = sum(a[k].size == b[k].size for k in a)
    max_diff = max(
        float(np.abs(a[k][: min(a[k].size, b[k].size)] - b[k][: min(a[k].size, b[k].size)]).max())
        for k in a
    )
    rms_ratio = float(
        np.median([np.sqrt(np.mean(a[k] ** 2) / max(np.mean(b[k] ** 2), 1e-20)) for k in a])
    )

    settings = bundle.manifest["metrics"]["settings"]
    cer: dict[str, dict[str, float]] = {}
    variants = {"wav": (root, entries)} | {
        name: (
            work,
            [dataclasses.replace(e, audio=_relative(e, f"{fmt}-{name}", ".wav")) for e in entries],
        )
        for name in FRONT_ENDS
    }
    for variant, (variant_root, variant_entries) in variants.items():
        start = time.monotonic()
        report = evaluate(
            bundle.model,
            bundle.vocab,
            variant_entries,
            root=variant_root,
            batch_size=settings["batch_size"],
            methods=("greedy",),
        ).to_dict()
        cer[variant] = {
            lang: 100 * result["cer"]["greedy"] for lang, result in report["languages"].items()
        }
        log(f"{variant}: evaluated in {time.monotonic() - start:.0f} s")
    shipped = {
        lang: 100 * bundle.manifest["metrics"]["languages"][lang]["cer"]["greedy"]
        for lang in cer["wav"]
    }
    return {
        "clips": len(entries),
        "encoded": {
            "format": fmt,
            "encoder": encoder,
            "rate": ENCODED_RATE,
            "channels": 2,
            "bit_rate": bit_rate,
        },
        "cer_greedy": cer,
        "manifest_cer_greedy": shipped,
        "samples": {
            "same_length": same_length,
            "max_abs_difference": max_diff,
            "median_rms_ratio": rms_ratio,
        },
    }


def table(result: dict[str, Any]) -> str:
    cer = result["cer_greedy"]
    columns = ["manifest", *cer]
    values = {"manifest": result["manifest_cer_greedy"], **cer}
    languages = sorted(cer["wav"])
    lines = [
        "| language | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for lang in [*languages, "average"]:
        cells = [
            np.mean([values[c][x] for x in languages]) if lang == "average" else values[c][lang]
            for c in columns
        ]
        lines.append(f"| {lang} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--corpus", type=Path, default=None, help="a corpus folder to use")
    parser.add_argument("--format", choices=sorted(FORMATS), default="mp3")
    parser.add_argument("--bit-rate", type=int, default=128_000)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = run(args.work_dir, args.bundle, args.corpus, args.format, args.bit_rate, print)
    s = result["samples"]
    print(table(result))
    print(
        f"trainer vs service samples: {s['same_length']}/{result['clips']} of equal length, "
        f"max |difference| {s['max_abs_difference']:.3g}, "
        f"median RMS ratio {s['median_rms_ratio']:.4f}"
    )
    report = args.work_dir / f"report-{args.format}.json"
    report.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
