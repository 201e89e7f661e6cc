"""The compiled conv feature encoder (model/compiled.py) against the eager forward."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils

from model.compiled import CompiledFeatures, compile_supported
from tests.model.helpers import LANGS, micro_model, random_masks

pytestmark = pytest.mark.skipif(not compile_supported(), reason="inductor needs a C++ compiler")


def _batch(seconds: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded noise ``[B, T]`` and lengths ``[B]`` (padding inside the batch)."""
    lengths = torch.tensor([int(s * 16_000) for s in seconds])
    gen = torch.Generator().manual_seed(seed)
    waves = torch.randn(len(seconds), int(lengths.max()), generator=gen)
    for i, n in enumerate(lengths.tolist()):
        waves[i, n:] = 0.0
    return waves, lengths


@pytest.mark.parametrize(
    ("extractor_mode", "layer_norm_first"),
    [("layer_norm", True), pytest.param("group_norm", False, marks=pytest.mark.slow)],
)
def test_compiled_equals_eager_for_mixed_languages_and_padding_without_recompiling(
    extractor_mode: str, layer_norm_first: bool
) -> None:
    torch.set_num_threads(1)
    model = micro_model(
        extractor_mode=extractor_mode, layer_norm_first=layer_norm_first, normalize_waveform=True
    ).eval()
    model.set_masks(random_masks(model, LANGS))
    model.set_weight_cache(1 << 26)
    compiled = CompiledFeatures(model)
    with torch.inference_mode():
        compiled.warm_up()
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        # lengths and batch sizes the warm-up did not use: no new graph may be compiled
        for seconds, ids in [
            ([1.0, 0.6, 2.7, 1.0, 0.25, 0.7], [2, 0, 1, 2, 3, -1]),  # unsorted, dense sample
            ([5.3, 4.9], [1, 1]),
            ([0.45], [3]),
        ]:
            waves, lengths = _batch(seconds, seed=len(ids))
            lang_ids = torch.tensor(ids)
            eager = model(waves, lengths, lang_ids)
            fast = compiled.forward(waves, lengths, lang_ids)
            assert fast.logits.shape == eager.logits.shape
            assert fast.lengths.tolist() == eager.lengths.tolist()
            for i, n in enumerate(eager.lengths.tolist()):
                diff = (fast.logits[i, :n] - eager.logits[i, :n]).abs().max().item()
                assert diff <= 1e-4, (seconds, i, diff)
            lid = compiled.identify_language(waves, lengths)
            torch.testing.assert_close(
                lid, model.identify_language(waves, lengths), rtol=0, atol=1e-4
            )
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_window_frames_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_frames"):
        CompiledFeatures(micro_model(), window_frames=0)
