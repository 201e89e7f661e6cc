"""Text-to-speech engines packaged for Debian behind one small interface.

Each engine turns ``(text, voice)`` into float32 mono samples at 16 kHz, shape ``[T]``:

- ``espeak-ng`` (package ``espeak-ng``): every language we train; voices are espeak-ng
  language voices with an optional variant (``"en+m3"``), ``espeak-ng --voices=variant``
  lists the variants.
- ``festival`` (``festival`` + ``festvox-*`` voices): English (``kal_diphone``,
  ``ked_diphone``, ``cmu_us_slt_arctic_hts``), Italian (``lp_diphone``, ``pc_diphone``),
  Czech (``czech_dita``, ``czech_krb``, ``czech_machac``, ``czech_ph``), Russian
  (``msu_ru_nsh_clunits``).
- ``flite`` (``flite``): English only (``kal``, ``kal16``, ``awb``, ``rms``, ``slt``).

Debian main holds nothing else for our languages: mbrola voices, SVOX pico and RHVoice
are not in main (docs/training.md).

Rate and pitch use espeak-ng's scales (words per minute, 0..99) for every engine, so one
corpus config draws them once: another engine stretches its durations by
``NORMAL_RATE / rate`` and scales its mean f0 by ``2 ** ((pitch - 50) / 100)`` where it
can (flite both; festival's diphone voices only the durations; its HTS and clunits voices
neither, they speak at their own pace and pitch).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from model.train.data.espeak import SAMPLE_RATE, EspeakError, Voice
from model.train.data.espeak import synthesize as espeak_synthesize

ESPEAK = "espeak-ng"
FESTIVAL = "festival"
FLITE = "flite"
NORMAL_RATE = 175  # espeak-ng's default words per minute: the other engines' normal pace
NORMAL_PITCH = 50


class SynthesisError(RuntimeError):
    """An engine is missing, does not know the voice, or failed on an input."""


@dataclass(frozen=True)
class SynthVoice:
    """One speaker of one engine, at a rate and pitch (espeak-ng's scales)."""

    synthesizer: str  # ESPEAK, FESTIVAL or FLITE
    name: str  # espeak-ng "en+m3" / "pt-br"; festival "kal_diphone"; flite "slt"
    rate: int = NORMAL_RATE  # words per minute
    pitch: int = NORMAL_PITCH  # 0..99

    @property
    def speaker(self) -> str:
        """The manifest's ``speaker``: the voice without rate and pitch. espeak-ng voices
        keep v1's plain name ("en+m3"), others are prefixed with their engine."""
        return self.name if self.synthesizer == ESPEAK else f"{self.synthesizer}:{self.name}"

    def f0_factor(self) -> float:
        return float(2 ** ((self.pitch - NORMAL_PITCH) / 100))

    def stretch(self) -> float:
        return NORMAL_RATE / max(1, self.rate)


class Synthesizer(Protocol):
    """What the corpus builder needs from an engine."""

    name: str

    def installed(self) -> bool:
        """Whether the engine's program is on this machine."""
        ...

    def voices(self) -> list[str]:
        """Voice names installed here (for espeak-ng: its variants)."""
        ...

    def synthesize(self, text: str, voice: SynthVoice) -> np.ndarray:
        """``text`` spoken by ``voice``: float32 mono at 16 kHz, shape ``[T]``."""
        ...


def _to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32))
    if rate != SAMPLE_RATE:
        mono = AF.resample(mono, rate, SAMPLE_RATE)
    return mono.numpy().astype(np.float32)


def _read_wav(data: bytes | Path, what: str) -> np.ndarray:
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        audio, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise SynthesisError(f"{what}: no audio ({exc})") from exc
    if audio.shape[0] == 0:
        raise SynthesisError(f"{what}: empty audio")
    out = _to_16k(audio, int(rate))
    # Some voices overshoot full scale (Czech diphones reach 1.01; resampling adds ringing):
    # scale down rather than let the 16-bit WAV clip.
    peak = float(np.abs(out).max())
    return out * np.float32(0.99 / peak) if peak > 0.99 else out


class EspeakNg:
    """espeak-ng: ``voice.name`` is a language voice with an optional ``+variant``."""

    name = ESPEAK

    def installed(self) -> bool:
        return shutil.which("espeak-ng") is not None

    def voices(self) -> list[str]:
        return espeak_variants()

    def synthesize(self, text: str, voice: SynthVoice) -> np.ndarray:
        language, _, variant = voice.name.partition("+")
        try:
            return espeak_synthesize(
                text, Voice(language, variant or None, voice.rate, voice.pitch)
            )
        except EspeakError as exc:
            raise SynthesisError(str(exc)) from exc


@cache
def espeak_variants() -> list[str]:
    """Every variant ``espeak-ng --voices=variant`` lists, by file name (what ``+`` takes;
    one holds a space, so the columns are cut at the header's positions)."""
    if shutil.which("espeak-ng") is None:
        raise SynthesisError("espeak-ng is not installed: apt-get install espeak-ng")
    out = subprocess.run(
        ["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    header = out[0]
    start, end = header.index("File"), header.index("Other Languages")
    names = []
    for line in out[1:]:
        file = line[start:end].strip()
        if file.startswith("!v/"):
            names.append(file[3:])
    return sorted(names)


# Festival reads its input in the voice's 8-bit encoding (UTF-8 only for the Russian
# voice); UTF-8 into a Latin-1 voice makes it spell out the bytes.
FESTIVAL_VOICES: dict[str, tuple[str, str]] = {
    # voice -> (language, input encoding)
    "kal_diphone": ("en", "latin-1"),
    "ked_diphone": ("en", "latin-1"),
    "cmu_us_slt_arctic_hts": ("en", "latin-1"),
    "lp_diphone": ("it", "latin-1"),
    "pc_diphone": ("it", "latin-1"),
    "czech_dita": ("cs", "iso-8859-2"),
    "czech_krb": ("cs", "iso-8859-2"),
    "czech_machac": ("cs", "iso-8859-2"),
    "czech_ph": ("cs", "iso-8859-2"),
    "msu_ru_nsh_clunits": ("ru", "utf-8"),
}
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")


class Festival:
    """Festival's ``text2wave``; ``voice.name`` is the voice without ``voice_``."""

    name = FESTIVAL

    def installed(self) -> bool:
        return shutil.which("text2wave") is not None

    def voices(self) -> list[str]:
        if not FESTIVAL_VOICE_DIR.is_dir():
            return []
        found = {p.name for p in FESTIVAL_VOICE_DIR.glob("*/*") if p.is_dir()}
        return sorted(found & set(FESTIVAL_VOICES))

    def synthesize(self, text: str, voice: SynthVoice) -> np.ndarray:
        if voice.name not in FESTIVAL_VOICES:
            raise SynthesisError(f"festival: unknown voice {voice.name!r}")
        program = shutil.which("text2wave")
        if program is None:
            raise SynthesisError("festival is not installed: apt-get install festival")
        _, encoding = FESTIVAL_VOICES[voice.name]
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError as exc:
            raise SynthesisError(f"festival {voice.name}: {exc}") from exc
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            # Text goes in on stdin (never parsed as Scheme or options). Duration_Stretch
            # slows the diphone voices; HTS and clunits voices ignore it.
            cmd = [
                program,
                "-eval",
                f"(voice_{voice.name})",
                "-eval",
                f"(Parameter.set 'Duration_Stretch {voice.stretch():.3f})",
                "-o",
                str(out),
            ]
            proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
            if proc.returncode != 0 or not out.is_file():
                raise SynthesisError(
                    f"festival {voice.name} failed: {proc.stderr.decode(errors='replace')}"
                )
            return _read_wav(out, f"festival {voice.name}")


FLITE_VOICES = ("awb", "kal", "kal16", "rms", "slt")  # built into Debian's flite, English
# Mean f0 (Hz) flite's voices aim at; pitch scales it (rms ignores the setting).
FLITE_F0 = {"awb": 100.0, "kal": 105.0, "kal16": 105.0, "rms": 100.0, "slt": 170.0}


class Flite:
    """flite (Festival-lite): English voices compiled into the program."""

    name = FLITE

    def installed(self) -> bool:
        return shutil.which("flite") is not None

    def voices(self) -> list[str]:
        program = shutil.which("flite")
        if program is None:
            return []
        listed = subprocess.run([program, "-lv"], capture_output=True, text=True, check=False)
        names = listed.stdout.partition(":")[2].split()
        return sorted(set(names) & set(FLITE_VOICES))

    def synthesize(self, text: str, voice: SynthVoice) -> np.ndarray:
        if voice.name not in FLITE_VOICES:
            raise SynthesisError(f"flite: unknown voice {voice.name!r}")
        program = shutil.which("flite")
        if program is None:
            raise SynthesisError("flite is not installed: apt-get install flite")
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            # A file, not -t: a text starting with "-" would be read as an option.
            try:
                src.write_text(text + "\n", encoding="latin-1")
            except UnicodeEncodeError as exc:
                raise SynthesisError(f"flite {voice.name}: {exc}") from exc
            f0 = FLITE_F0[voice.name] * voice.f0_factor()
            cmd = [
                program,
                "-voice",
                voice.name,
                "--setf",
                f"duration_stretch={voice.stretch():.3f}",
                "--setf",
                f"int_f0_target_mean={f0:.1f}",
                "-f",
                str(src),
                "-o",
                str(out),
            ]
            proc = subprocess.run(cmd, capture_output=True, check=False)
            if proc.returncode != 0 or not out.is_file():
                raise SynthesisError(
                    f"flite {voice.name} failed: {proc.stderr.decode(errors='replace')}"
                )
            return _read_wav(out, f"flite {voice.name}")


SYNTHESIZERS: dict[str, Synthesizer] = {s.name: s for s in (EspeakNg(), Festival(), Flite())}


def voice_language(synthesizer: str, name: str) -> str | None:
    """The language a non-espeak voice speaks; None for espeak-ng (any language) and for a
    voice the engine does not have."""
    if synthesizer == FESTIVAL:
        return FESTIVAL_VOICES[name][0] if name in FESTIVAL_VOICES else None
    if synthesizer == FLITE:
        return "en" if name in FLITE_VOICES else None
    return None


def can_speak(voice: SynthVoice, text: str) -> bool:
    """Whether the engine can take every letter of ``text`` (festival's and flite's voices
    read 8-bit text; espeak-ng reads UTF-8)."""
    if voice.synthesizer == FESTIVAL:
        encoding = FESTIVAL_VOICES[voice.name][1] if voice.name in FESTIVAL_VOICES else "ascii"
    elif voice.synthesizer == FLITE:
        encoding = "latin-1"
    else:
        return True
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def synthesize(text: str, voice: SynthVoice) -> np.ndarray:
    """``text`` spoken by ``voice`` with its engine: float32 mono 16 kHz ``[T]``."""
    if voice.synthesizer not in SYNTHESIZERS:
        raise SynthesisError(
            f"unknown synthesizer {voice.synthesizer!r}: choose from {sorted(SYNTHESIZERS)}"
        )
    return SYNTHESIZERS[voice.synthesizer].synthesize(text, voice)
