"""Speech synthesis with espeak-ng (Debian package ``espeak-ng``), resampled to 16 kHz mono.

Used by the synthetic corpus builder and by the test fixtures, so tests run on
speech-like audio rather than noise.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed on an input."""


@dataclass(frozen=True)
class Voice:
    """One espeak-ng speaker: language voice, optional variant, speaking rate and pitch."""

    language: str  # espeak-ng voice name, e.g. "en", "de", "es"
    variant: str | None = None  # e.g. "m3", "f2" (see `espeak-ng --voices=variant`)
    rate: int = 160  # words per minute
    pitch: int = 50  # 0..99

    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakError("espeak-ng is not installed: apt-get install espeak-ng")
    return path


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak ``text`` with ``voice``; returns float32 mono samples at 16 kHz, shape ``[T]``."""
    cmd = [
        espeak_binary(),
        "-v",
        voice.espeak_name(),
        "-s",
        str(voice.rate),
        "-p",
        str(voice.pitch),
        "--stdout",
    ]
    # Text goes through stdin so that leading dashes or quotes are never parsed as options.
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) < 64:
        raise EspeakError(
            f"espeak-ng failed for voice {voice.espeak_name()!r}: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    mono = torch.from_numpy(audio.mean(axis=1))
    if rate != SAMPLE_RATE:
        mono = AF.resample(mono, rate, SAMPLE_RATE)
    return mono.numpy().astype(np.float32)


def synthesize_to_wav(text: str, voice: Voice, path: Path) -> float:
    """Write ``text`` spoken by ``voice`` to a 16 kHz mono 16-bit WAV; returns its duration (s)."""
    samples = synthesize(text, voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
    return len(samples) / SAMPLE_RATE
