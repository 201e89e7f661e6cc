"""Augmentation effects do what they say, and are deterministic from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from model.train.data.augment import (
    CODECS,
    AugmentConfig,
    add_noise,
    apply_gain,
    augment,
    codec_round_trip,
    reverberate,
    speed_perturb,
    synthetic_rir,
    telephone,
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


def test_telephone_band(voice: np.ndarray) -> None:
    out = telephone(voice)
    assert out.shape == voice.shape and out.dtype == np.float32

    def share_above(x: np.ndarray, hz: float) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / 16_000)
        return float(power[freqs > hz].sum() / power.sum())

    # espeak-ng puts ~1 % of its power above 3.8 kHz; the 8 kHz line leaves ~none
    assert share_above(voice, 3800) > 1e-3
    assert share_above(out, 3800) < 1e-4
    assert share_above(out, 0) > 0 and np.abs(out).max() > 0.05


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codec_round_trip_keeps_length_and_timing(voice: np.ndarray, codec: str) -> None:
    for bit_rate in CODECS[codec].bit_rates:
        out = codec_round_trip(voice, codec, bit_rate)
        assert out.shape == voice.shape and out.dtype == np.float32
        # still the same speech at the same time (codec delay removed): correlated at lag 0
        # and less so 10 ms off; the lossiest (opus 8 kb/s, amr 4.75 kb/s) still above 0.7
        here = float(np.corrcoef(voice, out)[0, 1])
        shifted = float(np.corrcoef(voice[160:], out[:-160])[0, 1])
        assert here > 0.7 and here > shifted + 0.2, (codec, bit_rate, here, shifted)
        assert not np.array_equal(out, voice)  # lossy


def test_channel_effects_are_drawn_and_recorded(voice: np.ndarray) -> None:
    config = AugmentConfig(telephone_prob=1.0, codec_prob=1.0, codecs=("mp3",))
    out, applied = augment(voice, np.random.default_rng(5), config)
    assert applied["telephone"] == 1.0 and applied["codec_mp3"] in CODECS["mp3"].bit_rates
    again, _ = augment(voice, np.random.default_rng(5), config)
    assert np.array_equal(out, again)
    # at probability 0 (v1's configs) no channel effect is applied
    _, applied = augment(voice, np.random.default_rng(5), AugmentConfig())
    assert not any(k == "telephone" or k.startswith("codec_") for k in applied)
    with pytest.raises(ValueError, match="unknown codecs"):
        AugmentConfig(codecs=("gsm",))


def test_a_missing_encoder_fails_when_the_config_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # an FFmpeg build without an encoder (PyAV 18.1.1 dropped AMR-NB's) stops a corpus
    # config up front, with the way out, instead of failing halfway through the corpus
    from model.train.data import augment as module

    monkeypatch.setitem(module.CODECS, "amr_nb", module.Codec("amr", "no_such_encoder", 8000))
    with pytest.raises(ValueError, match=r"cannot encode amr_nb \(no_such_encoder\).*pins"):
        AugmentConfig(codec_prob=0.5)
    AugmentConfig(codec_prob=0.5, codecs=("mp3", "opus"))  # without it the config is fine
    AugmentConfig()  # and a config that applies no codec checks none
