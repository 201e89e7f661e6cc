"""The model worker in-process: a padded mixed-language batch equals each sample alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.worker import ModelWorker, resolve_device, resolve_dtype


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
