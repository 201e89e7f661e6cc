"""Augmentation effects do what they say, and are deterministic from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from model.train.data.augment import (
    AugmentConfig,
    add_noise,
    apply_gain,
    augment,
    reverberate,
    speed_perturb,
    synthetic_rir,
)
from model.train.data.espeak import Voice, synthesize


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synthesize("the quick brown fox jumps over the lazy dog", Voice("en"))


def test_speed_changes_length(voice: np.ndarray) -> None:
    for factor in (0.9, 1.1):
        out = speed_perturb(voice, factor)
        assert len(out) == pytest.approx(len(voice) / factor, rel=0.002)
    assert speed_perturb(voice, 1.0) is voice


def test_noise_snr(voice: np.ndarray) -> None:
    for exponent in (0.0, 1.0, 2.0):
        out = add_noise(voice, 10.0, np.random.default_rng(0), exponent)
        noise = out - voice
        snr = 10 * np.log10(np.mean(voice.astype(np.float64) ** 2) / np.mean(noise**2))
        assert snr == pytest.approx(10.0, abs=0.1)


def test_reverb_keeps_length_and_peak(voice: np.ndarray) -> None:
    rir = synthetic_rir(0.4, np.random.default_rng(1))
    assert rir[0] == 1.0 and len(rir) == int(0.4 * 16000)
    # energy decays: the last 10 % of the tail is ~50 dB below the first 10 %
    tail = rir[1:] ** 2
    head, end = tail[: len(tail) // 10].sum(), tail[-len(tail) // 10 :].sum()
    assert 10 * np.log10(head / end) > 35
    wet = reverberate(voice, rir)
    assert len(wet) == len(voice)
    assert np.abs(wet).max() == pytest.approx(np.abs(voice).max(), rel=1e-4)
    assert not np.allclose(wet, voice, atol=1e-3)


def test_gain_never_clips(voice: np.ndarray) -> None:
    quiet = apply_gain(voice, -6.0)
    assert np.abs(quiet).max() == pytest.approx(np.abs(voice).max() / 10 ** (6 / 20), rel=1e-5)
    loud = apply_gain(voice, 40.0)
    assert np.abs(loud).max() == pytest.approx(0.99, rel=1e-5)


def test_augment_deterministic(voice: np.ndarray) -> None:
    config = AugmentConfig(speed_prob=1, reverb_prob=1, noise_prob=1, gain_prob=1)
    a, applied = augment(voice, np.random.default_rng(42), config)
    b, _ = augment(voice, np.random.default_rng(42), config)
    c, _ = augment(voice, np.random.default_rng(43), config)
    assert set(applied) == {"speed", "rt60", "snr_db", "gain_db"}
    assert np.array_equal(a, b) and not (len(a) == len(c) and np.allclose(a, c))
    assert a.dtype == np.float32 and np.abs(a).max() <= 0.99 + 1e-6
    none, applied = augment(voice, np.random.default_rng(0), AugmentConfig(0, (1, 1), 0,
                            (0.1, 0.1), 0, (1, 1), 0, (0, 0)))  # fmt: skip
    assert applied == {} and np.allclose(none, voice)
