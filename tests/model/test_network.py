"""Mixed-language masked execution: equivalence with dense masked models, and gradients."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from model.network import LassModel, normalize_waveforms
from tests.model.helpers import LANGS, micro_config, micro_model, random_masks


def _dense_copy_with_mask(model: LassModel, language: str) -> LassModel:
    """A plain dense model whose prunable weights were multiplied by ``language``'s mask."""
    masks = model.masks
    assert masks is not None
    dense = copy.deepcopy(model)
    dense.set_masks(None)
    params = dict(dense.named_parameters())
    with torch.no_grad():
        for name in masks.shapes:
            params[name].mul_(masks.get(language, name).to(params[name].dtype))
    return dense


@pytest.mark.parametrize(
    ("extractor_mode", "layer_norm_first", "normalize"),
    [("layer_norm", True, False), ("group_norm", False, False), ("layer_norm", True, True)],
)
def test_mixed_batch_equals_each_sample_alone_through_dense_masked_model(
    extractor_mode: str, layer_norm_first: bool, normalize: bool
) -> None:
    model = micro_model(
        extractor_mode=extractor_mode,
        layer_norm_first=layer_norm_first,
        normalize_waveform=normalize,
    ).eval()
    model.set_masks(random_masks(model, LANGS))
    lengths = torch.tensor([16000, 9000, 12345, 16000, 4000, 7000])
    lang_ids = torch.tensor([2, 0, 1, 2, 3, 0])  # unsorted, 4 languages, repeats
    gen = torch.Generator().manual_seed(1)
    waves = torch.randn(len(lengths), int(lengths.max()), generator=gen)
    for i, n in enumerate(lengths.tolist()):
        waves[i, n:] = 0.0
    with torch.no_grad():
        out = model(waves, lengths, lang_ids)
        for i, n in enumerate(lengths.tolist()):
            dense = _dense_copy_with_mask(model, LANGS[int(lang_ids[i])]).eval()
            alone = dense(waves[i : i + 1, :n])
            frames = int(out.lengths[i])
            assert frames == alone.logits.shape[1]
            hid_diff = (out.hidden[i, :frames] - alone.hidden[0]).abs().max().item()
            log_diff = (out.logits[i, :frames] - alone.logits[0]).abs().max().item()
            assert hid_diff <= 1e-5, (i, hid_diff)
            assert log_diff <= 1e-5, (i, log_diff)
            assert out.lid_logits is not None and alone.lid_logits is not None
            assert (out.lid_logits[i] - alone.lid_logits[0]).abs().max().item() <= 1e-5


def test_masks_change_the_output_and_dense_ids_match_unmasked_model() -> None:
    model = micro_model().eval()
    waves = torch.randn(2, 8000)
    with torch.no_grad():
        dense = model(waves).logits
        model.set_masks(random_masks(model, LANGS))
        masked = model(waves, lang_ids=torch.tensor([0, 1])).logits
        dense_ids = model(waves, lang_ids=torch.tensor([-1, -1])).logits
        no_ids = model(waves).logits
    assert (masked - dense).abs().max() > 1e-3
    torch.testing.assert_close(dense_ids, dense, rtol=0, atol=0)
    torch.testing.assert_close(no_ids, dense, rtol=0, atol=0)


def _loss(
    model: LassModel,
    waves: torch.Tensor,
    lengths: torch.Tensor,
    lang_ids: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """A per-sample-additive loss over valid frames, so per-sample gradients add up."""
    out = model(waves, lengths, lang_ids)
    valid = torch.arange(out.logits.shape[1])[None, :] < out.lengths[:, None]
    return (out.logits * weights[: out.logits.shape[1]] * valid[..., None]).sum()


def test_gradients_pruned_zero_and_shared_weights_sum_both_languages() -> None:
    model = micro_model().train()  # dropout 0 in the micro config: deterministic training mode
    masks = random_masks(model, ["en", "de"], density=0.5)
    model.set_masks(masks)
    lengths = torch.tensor([12000, 16000, 9000])
    lang_ids = torch.tensor([1, 0, 1])  # de, en, de
    gen = torch.Generator().manual_seed(3)
    waves = torch.randn(3, 16000, generator=gen)
    waves[0, 12000:] = 0
    waves[2, 9000:] = 0
    weights = torch.randn(60, model.vocab_size, generator=gen)

    model.zero_grad()
    _loss(model, waves, lengths, lang_ids, weights).backward()
    mixed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    per_lang: dict[str, dict[str, torch.Tensor]] = {}
    for lang in ["en", "de"]:
        idx = [i for i in range(3) if LANGS[int(lang_ids[i])] == lang]
        model.zero_grad()
        for i in idx:
            n = int(lengths[i])
            _loss(model, waves[i : i + 1, :n], None, lang_ids[i : i + 1], weights).backward()  # type: ignore[arg-type]
        per_lang[lang] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    for name in masks.shapes:
        m_en, m_de = masks.get("en", name), masks.get("de", name)
        g = mixed[name]
        g_en, g_de = per_lang["en"][name], per_lang["de"][name]
        assert torch.all(g[~m_en & ~m_de] == 0), name  # pruned by both: exactly zero
        assert torch.all(g_en[~m_en] == 0) and torch.all(g_de[~m_de] == 0), name
        both = m_en & m_de
        torch.testing.assert_close(g[both], g_en[both] + g_de[both], rtol=1e-4, atol=1e-6)
        only_en = m_en & ~m_de
        torch.testing.assert_close(g[only_en], g_en[only_en], rtol=1e-4, atol=1e-6)
        assert g_en[both].abs().sum() > 0 and g_de[both].abs().sum() > 0


def test_frame_lengths_match_conv_arithmetic_and_preset_stride() -> None:
    model = micro_model()
    waves = torch.randn(1, 16000)
    features, _ = model.extract_features(waves, None)
    assert int(model.frame_lengths(torch.tensor([16000]))[0]) == features.shape[1] == 49
    assert model.config.frame_stride == 320


def test_identify_language_and_time_mask_embedding() -> None:
    model = micro_model().eval()
    waves = torch.randn(2, 8000)
    lid = model.identify_language(waves, torch.tensor([8000, 5000]))
    assert lid.shape == (2, len(LANGS))
    features, frames = model.extract_features(waves, None)
    time_mask = torch.zeros(features.shape[:2], dtype=torch.bool)
    time_mask[:, 3:7] = True
    with torch.no_grad():
        plain = model.encode(features, frames, None)
        masked = model.encode(features, frames, None, time_mask=time_mask)
    assert (plain - masked).abs().max() > 1e-4


def test_bad_lang_ids_are_refused() -> None:
    model = micro_model().eval()
    model.set_masks(random_masks(model, ["en", "de"]))
    waves = torch.randn(2, 4000)
    with pytest.raises(KeyError, match="es"):
        model(waves, lang_ids=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="out of range"):
        model(waves, lang_ids=torch.tensor([0, 9]))


def test_inference_path_and_weight_cache_match_training_path() -> None:
    model = micro_model().eval()
    masks = random_masks(model, LANGS)
    model.set_masks(masks)
    waves = torch.randn(5, 8000)
    lengths = torch.tensor([8000, 6000, 8000, 7000, 5000])
    ids = torch.tensor([3, 1, 1, -1, 0])
    reference = model(waves, lengths, ids).logits.detach()  # grad enabled: autograd path
    with torch.inference_mode():
        plain = model(waves, lengths, ids).logits
    torch.testing.assert_close(plain, reference, rtol=0, atol=1e-5)

    cache = model.set_weight_cache(1 << 30)
    assert cache is not None
    with torch.inference_mode():
        first = model(waves, lengths, ids).logits
        second = model(waves, lengths, ids).logits
    torch.testing.assert_close(first, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    stats = cache.stats()
    assert stats.hits > 0 and stats.entries == 3 * len(masks.shapes)  # 3 masked languages

    # An in-place weight update and a re-added language both invalidate cached weights.
    with torch.no_grad():
        for p in model.encoder.transformer.layers.parameters():
            p.mul_(1.5)
    masks.remove("en")
    masks.add("en", {n: ~random_masks(model, ["en"], seed=9).get("en", n) for n in masks.shapes})
    expected = model(waves, lengths, ids).logits.detach()
    with torch.inference_mode():
        after = model(waves, lengths, ids).logits
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)
    assert (after - first).abs().max() > 1e-3


def test_weight_cache_respects_its_byte_budget() -> None:
    model = micro_model().eval()
    model.set_masks(random_masks(model, LANGS))
    one_weight = 64 * 128 * 4  # bytes of the largest prunable weight
    cache = model.set_weight_cache(3 * one_weight)
    assert cache is not None
    with torch.inference_mode():
        model(torch.randn(4, 4000), lang_ids=torch.tensor([0, 1, 2, 3]))
    stats = cache.stats()
    assert 0 < stats.used_bytes <= 3 * one_weight
    model.set_weight_cache(None)
    assert model.weight_cache is None


def test_no_grad_masked_forward_under_bf16_autocast() -> None:
    model = micro_model().eval()
    model.set_masks(random_masks(model, LANGS))
    waves = torch.randn(3, 6000)
    ids = torch.tensor([0, 2, 1])
    with torch.no_grad():
        reference = model(waves, lang_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(waves, lang_ids=ids).logits
    assert low.shape == reference.shape
    assert (low.float() - reference).abs().max().item() < 0.1 * reference.abs().max().item()


def test_routed_lang_ids_give_the_order_inside_the_transformer() -> None:
    model = micro_model().eval()
    model.set_masks(random_masks(model, LANGS))
    seen: list[torch.Tensor | None] = []
    layer = model.encoder.transformer.layers[0]
    handle = layer.register_forward_hook(lambda *_: seen.append(model.routed_lang_ids))
    with torch.no_grad():
        model(torch.randn(4, 4000), lang_ids=torch.tensor([3, 0, 2, 0]))
        model.set_masks(None)
        model(torch.randn(4, 4000), lang_ids=torch.tensor([3, 0, 2, 0]))
    handle.remove()
    assert seen[0] is not None and seen[0].tolist() == [0, 0, 2, 3]
    assert seen[1] is not None and seen[1].tolist() == [3, 0, 2, 0]  # dense: caller's order
    assert model.routed_lang_ids is None


def test_no_per_language_weight_copies_without_cache() -> None:
    model = micro_model().eval()
    masks = random_masks(model, LANGS)
    model.set_masks(masks)
    with torch.inference_mode():
        model(torch.randn(4, 4000), lang_ids=torch.tensor([0, 1, 2, 3]))
    shapes = {tuple(s) for s in masks.shapes.values()}
    scratch = model._route.scratch
    # one 0/1 mask buffer and one weight buffer per distinct shape, shared by all languages
    assert len(scratch) == 2 * len(shapes)
    assert model.weight_cache is None


@pytest.mark.parametrize("cache", [False, True])
def test_forwards_in_several_threads_at_once_give_each_thread_its_own_routing(
    cache: bool,
) -> None:
    """The server runs forwards in several model threads: each batch's language groups,
    ids and scratch buffers are its thread's, so concurrent forwards of different
    languages give exactly what they give alone (a shared route mixed them up)."""
    model = micro_model().eval()
    model.set_masks(random_masks(model, LANGS))
    if cache:
        model.set_weight_cache(1 << 30)
    gen = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(3, 8000, generator=gen), torch.tensor([k % 4, (k + 1) % 4, k % 4]))
        for k in range(4)
    ]
    with torch.inference_mode():
        alone = [model(w, lang_ids=ids).logits for w, ids in batches]
    barrier = threading.Barrier(len(batches))
    diffs: list[float] = [0.0] * len(batches)

    def run(k: int) -> None:
        waves, ids = batches[k]
        with torch.inference_mode():
            barrier.wait()
            for _ in range(15):
                out = model(waves, lang_ids=ids).logits
                diffs[k] = max(diffs[k], (out - alone[k]).abs().max().item())

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(diffs) <= 1e-5, diffs
    assert model.routed_lang_ids is None


def test_normalize_waveforms_uses_valid_samples_only() -> None:
    gen = torch.Generator().manual_seed(3)
    waves = torch.zeros(2, 1000)
    waves[0] = 0.2 * torch.randn(1000, generator=gen) + 0.5
    waves[1, :600] = 3.0 * torch.randn(600, generator=gen) - 1.0
    out = normalize_waveforms(waves, torch.tensor([1000, 600]))
    assert out[0].mean().abs() < 1e-5 and (out[0].std(unbiased=False) - 1).abs() < 1e-4
    assert out[1, :600].mean().abs() < 1e-5
    assert (out[1, :600].std(unbiased=False) - 1).abs() < 1e-4
    assert torch.equal(out[1, 600:], torch.zeros(400)), "padding stays zero"
    assert torch.equal(normalize_waveforms(torch.zeros(1, 50), None), torch.zeros(1, 50))


def test_normalizing_model_ignores_gain_and_offset() -> None:
    norm = micro_model(normalize_waveform=True).eval()
    raw = micro_model(normalize_waveform=False).eval()
    gen = torch.Generator().manual_seed(4)
    wave = torch.randn(1, 8000, generator=gen)
    with torch.no_grad():
        a = norm(wave).logits
        b = norm(0.05 * wave + 0.01).logits  # -26 dB with a DC offset
        assert (a - b).abs().max().item() <= 1e-4
        # The flag is what does it: the raw model sees a different input.
        assert (raw(wave).logits - raw(0.05 * wave + 0.01).logits).abs().max().item() > 1e-3


def test_encoder_lid_head_reads_a_dense_pass_and_ignores_padding() -> None:
    model = micro_model().eval()
    model.replace_lid_head("encoder")
    model.set_masks(random_masks(model, LANGS))
    lengths = torch.tensor([16000, 9000, 4000])
    waves = torch.randn(len(lengths), 16000, generator=torch.Generator().manual_seed(2))
    for i, n in enumerate(lengths.tolist()):
        waves[i, n:] = 0.0
    with torch.no_grad():
        lid = model.identify_language(waves, lengths)
        assert lid.shape == (3, len(LANGS))
        for i, n in enumerate(lengths.tolist()):
            alone = model.identify_language(waves[i : i + 1, :n], None)
            assert (lid[i] - alone[0]).abs().max().item() <= 1e-5, i
        features, frames = model.extract_features(waves, lengths)
        hidden = model.encode(features, frames, None)  # dense: every weight, no mask
        assert model.lid_head is not None
        torch.testing.assert_close(lid, model.lid_head(hidden, frames))
        masked = model.encode(features, frames, torch.zeros(3, dtype=torch.long))
        assert not torch.allclose(model.lid_head(masked, frames), lid)
        # a dense forward computes it on the way; a masked forward leaves it to identify_language
        dense_out = model(waves, lengths)
        assert dense_out.lid_logits is not None
        torch.testing.assert_close(dense_out.lid_logits, lid)
        assert model(waves, lengths, torch.tensor([0, 1, 2])).lid_logits is None


def test_lid_input_is_checked_and_a_head_can_be_replaced() -> None:
    with pytest.raises(ValueError, match="lid_input"):
        LassModel(micro_config(), vocab_size=12, languages=LANGS, lid_input="spectrogram")
    model = micro_model()
    assert model.lid_input == "features" and model.lid_head is not None
    assert model.lid_head.norm.normalized_shape == (model.config.feature_dim,)
    model.replace_lid_head("encoder")
    assert model.lid_input == "encoder" and model.lid_head is not None
    assert model.lid_head.norm.normalized_shape == (model.config.encoder_embed_dim,)
    assert "lid_head.frame.0.weight" in model.state_dict()
    model.eval().replace_lid_head("features")  # a new head follows the model's mode
    assert model.lid_head is not None and not model.lid_head.training
    with pytest.raises(ValueError, match="lid_input"):
        model.replace_lid_head("spectrogram")
    no_languages = LassModel(micro_config(), vocab_size=12, languages=[])
    assert no_languages.lid_head is None
    with pytest.raises(ValueError, match="without languages"):
        no_languages.replace_lid_head("encoder")
