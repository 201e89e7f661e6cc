"""The model worker in-process: a padded mixed-language batch equals each sample alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.compiled import compile_supported
from model.decoding import greedy_decode_batch
from model.train.data.espeak import Voice, synthesize
from service.settings import DEFAULT_BUNDLE
from service.worker import (
    ModelWorker,
    resolve_compile,
    resolve_device,
    resolve_dtype,
    resolve_model_threads,
)


def test_mixed_padded_batch_matches_each_sample_alone(tiny_bundle: Path) -> None:
    torch.set_num_threads(1)
    worker = ModelWorker.load(tiny_bundle, "cpu", "fp32", weight_cache_mb=64)
    rng = np.random.default_rng(0)
    seconds = [1.0, 2.3, 0.4, 1.7]  # different lengths: padding inside the batch
    waves = [(0.1 * rng.standard_normal(int(s * 16_000))).astype(np.float32) for s in seconds]
    langs = ["en", "de", "it", "en"]
    batch = worker.run_asr(waves, langs)
    for wave, lang, out in zip(waves, langs, batch, strict=True):
        (alone,) = worker.run_asr([wave], [lang])
        assert out.logits.shape == alone.logits.shape
        assert out.logits.shape[0] == (len(wave) - 400) // 320 + 1  # 20 ms frames
        np.testing.assert_allclose(out.logits, alone.logits, atol=2e-4, rtol=1e-4)
    # The same audio through another language's sub-network gives other logits.
    (other,) = worker.run_asr([waves[0]], ["de"])
    assert not np.allclose(other.logits, batch[0].logits, atol=1e-3)
    probs = worker.run_lid(waves[:2])
    assert len(probs) == 2 and all(abs(float(p.sum()) - 1) < 1e-4 for p in probs)
    assert worker.warm_up(0.2) > 0


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_compile("off", torch.device("cpu")) is False
    assert resolve_compile("auto", torch.device("cuda")) is False
    assert resolve_compile("auto", torch.device("cpu")) is compile_supported()
    assert resolve_compile("auto", torch.device("cpu"), "group_norm") is False


# Sentences written for this test, spoken by espeak-ng (as the default model's test split is).
SPOKEN = {
    "en": "my brother reads a long book every evening",
    "de": "meine schwester kauft heute frisches brot",
    "es": "mi hermano lee un libro muy largo cada noche",
    "ru": "мой брат читает длинную книгу каждый вечер",
    "fr": "mon frère lit un long livre chaque soir",
}


@pytest.mark.skipif(not compile_supported(), reason="inductor needs a C++ compiler")
def test_compiled_forward_gives_the_eager_transcripts_on_the_default_bundle() -> None:
    torch.set_num_threads(1)
    worker = ModelWorker.load(DEFAULT_BUNDLE, "cpu", "fp32", weight_cache_mb=256, compile="on")
    assert worker.compiled is not None
    worker.warm_up(0.2)
    langs = list(SPOKEN)
    waves = [synthesize(SPOKEN[lang], Voice(lang)) for lang in langs]
    compiled = worker.run_asr(waves, langs)  # one mixed batch, padded to the longest
    worker.compiled, forward = None, worker.compiled
    eager = worker.run_asr(waves, langs)
    worker.compiled = forward
    vocab = worker.bundle.vocab
    texts = []
    for lang, a, b in zip(langs, compiled, eager, strict=True):
        np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-4)
        text_a, text_b = (
            greedy_decode_batch(torch.from_numpy(x.logits)[None], [len(x.logits)], [lang], vocab)
            for x in (a, b)
        )
        assert text_a[0].text == text_b[0].text
        texts.append(text_a[0].text)
    assert sum(len(t) for t in texts) > 0.5 * sum(len(s) for s in SPOKEN.values()), texts


def test_model_threads_resolution() -> None:
    # (LASS_MODEL_THREADS, LASS_TORCH_THREADS, LASS_DEVICE) -> (model threads, torch each)
    assert resolve_model_threads(None, 4, "cpu") == (2, 2)
    assert resolve_model_threads(None, 1, "cpu") == (1, 1)
    assert resolve_model_threads(None, 8, "cuda") == (1, 8)
    assert resolve_model_threads(3, 8, "cpu") == (3, 2)
    assert resolve_model_threads(4, 2, "cpu") == (4, 1)
    threads, each = resolve_model_threads(None, None, "cpu")
    assert threads == (2 if torch.get_num_threads() >= 2 else 1)
    assert each == max(1, torch.get_num_threads() // threads)
