"""Bit-packed language masks: packing, independence of languages, statistics."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import get_preset
from model.masks import (
    DEFAULT_SCOPE,
    LanguageMasks,
    pack_bits,
    prunable_parameter_names,
    unpack_bits,
)
from model.network import LassModel
from tests.model.helpers import micro_model, random_masks


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 4099])
def test_pack_unpack_round_trip(numel: int) -> None:
    mask = torch.rand(numel) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, numel), mask)


def test_msb_first_bit_order() -> None:
    mask = torch.tensor([True, False, False, False, False, False, False, True, True])
    assert pack_bits(mask).tolist() == [0b10000001, 0b10000000]


def test_one_bit_per_prunable_parameter() -> None:
    model = LassModel(get_preset("tiny"), vocab_size=40, languages=["en", "de"])
    names = prunable_parameter_names(model)
    assert len(names) == 6 * 6  # q, k, v, out, ffn in, ffn out per layer
    assert all(any(s in n for s in DEFAULT_SCOPE) for n in names)
    shapes = model.prunable_shapes()
    params = sum(math.prod(s) for s in shapes.values())
    masks = LanguageMasks.full(shapes, ["en", "de"])
    assert masks.bytes_per_language() == sum(math.ceil(math.prod(s) / 8) for s in shapes.values())
    assert masks.bytes_per_language() <= params / 8 + len(shapes)
    for buf in masks.state_dict().values():
        assert buf.dtype == torch.uint8 and buf.numel() == masks.bytes_per_language()


def test_scope_is_configurable() -> None:
    model = micro_model()
    wider = LassModel(
        model.config, 12, ["en"], scope=(*DEFAULT_SCOPE, "feature_projection", "ctc_head")
    )
    names = set(wider.prunable_shapes())
    assert "encoder.feature_projection.projection.weight" in names
    assert "ctc_head.weight" in names
    assert len(names) == len(model.prunable_shapes()) + 2


def test_add_and_remove_leave_other_languages_untouched() -> None:
    model = micro_model()
    masks = random_masks(model, ["en", "de", "es"])
    before = {lang: buf.clone() for lang, buf in masks.state_dict().items()}
    gen_en = masks.generation("en")
    masks.remove("de")
    extra = random_masks(model, ["it"], seed=5)
    masks.add("it", {n: extra.get("it", n) for n in masks.shapes})
    assert masks.languages == ["en", "es", "it"]
    for lang in ("en", "es"):
        assert torch.equal(masks.packed(lang), before[lang])
    assert masks.generation("en") == gen_en
    with pytest.raises(KeyError):
        masks.get("de", next(iter(masks.shapes)))
    with pytest.raises(ValueError, match="already"):
        masks.add("en", {n: extra.get("it", n) for n in masks.shapes})


def test_add_refuses_wrong_shape_dtype_and_names() -> None:
    masks = LanguageMasks({"a.weight": (4, 3)})
    with pytest.raises(ValueError, match="shape"):
        masks.add("en", {"a.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        masks.add("en", {"a.weight": torch.ones(4, 3)})
    with pytest.raises(ValueError, match="missing"):
        masks.add("en", {"b.weight": torch.ones(4, 3, dtype=torch.bool)})


def test_stats_match_brute_force() -> None:
    shapes = {"a": (5, 7), "b": (13,)}
    gen = torch.Generator().manual_seed(0)
    dense = {
        lang: {n: torch.rand(s, generator=gen) < d for n, s in shapes.items()}
        for lang, d in [("en", 0.5), ("de", 0.7), ("es", 0.3)]
    }
    masks = LanguageMasks(shapes)
    for lang, m in dense.items():
        masks.add(lang, m)
    flat = {lang: torch.cat([m[n].reshape(-1) for n in shapes]) for lang, m in dense.items()}
    stats = masks.stats()
    total = 5 * 7 + 13
    assert stats.total_parameters == total
    for lang, f in flat.items():
        assert stats.kept[lang] == int(f.sum())
        assert stats.density[lang] == pytest.approx(float(f.sum()) / total)
        others = torch.stack([g for k, g in flat.items() if k != lang]).any(0)
        assert stats.specific[lang] == int((f & ~others).sum())
    inter = int((flat["en"] & flat["de"]).sum())
    union = int((flat["en"] | flat["de"]).sum())
    assert stats.jaccard["en"]["de"] == pytest.approx(inter / union)
    all_kept = torch.stack(list(flat.values())).all(0)
    assert stats.kept_by_all == pytest.approx(float(all_kept.sum()) / total)
    assert set(stats.to_dict()) >= {"density", "jaccard", "kept_by_all", "specific"}


def test_state_dict_round_trip_and_size_check() -> None:
    model = micro_model()
    masks = random_masks(model, ["en", "de"])
    again = LanguageMasks.from_state_dict(masks.state_dict(), masks.shapes, ["en", "de"])
    for n in masks.shapes:
        assert torch.equal(again.get("de", n), masks.get("de", n))
    bad = {"en": masks.packed("en")[:-1]}
    with pytest.raises(ValueError, match="expected"):
        LanguageMasks.from_state_dict(bad, masks.shapes, ["en"])


def test_set_masks_refuses_mismatched_shapes() -> None:
    model = micro_model()
    with pytest.raises(ValueError, match="shapes"):
        model.set_masks(LanguageMasks({"x.weight": (2, 2)}))


def test_packed_masks_live_on_the_model_device() -> None:
    # "meta" stands in for an accelerator: no GPU is needed to see the buffers follow.
    model = micro_model()
    masks = random_masks(model, ["en", "de"])
    model.set_masks(masks)
    model.to("meta")
    assert model.masks is masks and masks.device.type == "meta"
    assert all(buf.device.type == "meta" for buf in masks.state_dict().values())
    cpu_masks = random_masks(micro_model(), ["es"])
    model.set_masks(cpu_masks)  # masks built elsewhere are moved to the model's device
    assert cpu_masks.packed("es").device.type == "meta"
