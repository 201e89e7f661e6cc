"""The espeak-ng fixture yields real speech of plausible length in each language."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from model.train.data.espeak import EspeakError, Voice, synthesize
from tests.conftest import SAMPLE_RATE, SENTENCES, Utterance


def test_speech_fixture_durations(speech: dict[str, list[Utterance]]) -> None:
    assert set(speech) == set(SENTENCES)
    for lang, utterances in speech.items():
        for utt in utterances:
            audio, rate = sf.read(utt.path, dtype="float32")
            assert rate == SAMPLE_RATE
            assert audio.ndim == 1
            assert abs(len(audio) / rate - utt.duration) < 1e-3
            # espeak-ng at 160 wpm: roughly 40-200 ms per character.
            chars = len(utt.text)
            assert 0.04 * chars < utt.duration < 0.2 * chars, (lang, utt.text, utt.duration)
            # not silence: a real signal with speech-level energy
            assert float(np.sqrt(np.mean(audio**2))) > 0.01


def test_voices_differ() -> None:
    a = synthesize("hello world", Voice("en", rate=120))
    b = synthesize("hello world", Voice("en", rate=220))
    assert len(a) > 1.3 * len(b)


def test_unknown_voice_is_an_error() -> None:
    with pytest.raises(EspeakError):
        synthesize("hello", Voice("xx-not-a-voice"))
