"""The masked linear's paths (autograd ``_GroupedMaskedLinear``, no-grad, autocast) against
the ``where`` reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.cache import MaskedWeightCache
from model.masked_linear import Group, MaskedLinear, MaskRoute, _GroupedMaskedLinear
from model.masks import LanguageMasks

NAME = "layer.weight"


def _layer(
    in_f: int, out_f: int, groups: list[Group], dtype: torch.dtype, bias: bool = True
) -> MaskedLinear:
    """A standalone MaskedLinear with random weights and masks for languages a, b, c."""
    gen = torch.Generator().manual_seed(0)
    masks = LanguageMasks({NAME: (out_f, in_f)})
    for lang in ("a", "b", "c"):
        masks.add(lang, {NAME: torch.rand(out_f, in_f, generator=gen) < 0.5})
    route = MaskRoute(masks=masks)
    route.groups = groups  # this (the test's) thread's routing
    layer = MaskedLinear(in_f, out_f, bias, NAME, route)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, in_f, generator=gen))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(out_f, generator=gen))
    return layer.to(dtype)


def _where_weight(layer: MaskedLinear, language: str | None) -> torch.Tensor:
    """``where(M_language, W, 0)`` ``[out, in]`` (``W`` for None): exactly 0 gradient where
    the mask is 0, the plainest statement of what the layer computes."""
    masks = layer._route.masks
    if language is None or masks is None:
        return layer.weight
    return torch.where(masks.get(language, NAME), layer.weight, 0.0)


def _reference(layer: MaskedLinear, x: torch.Tensor, groups: list[Group]) -> torch.Tensor:
    """Per-group ``F.linear`` with ``where(M, W, 0)``, concatenated (the old autograd path)."""
    outs = [F.linear(x[s:e], _where_weight(layer, lang), layer.bias) for lang, s, e in groups]
    return torch.cat(outs, dim=0)


# a shares rows with b and c, one dense group, a single group; 15 weights: not a multiple of 8
GROUPINGS: list[tuple[int, int, list[Group]]] = [
    (6, 4, [("a", 0, 2), ("b", 2, 3), ("c", 3, 5)]),
    (6, 4, [("a", 0, 1), (None, 1, 3), ("b", 3, 5)]),
    (6, 4, [("c", 0, 5)]),
    (3, 5, [("a", 0, 2), ("b", 2, 5)]),
]


@pytest.mark.parametrize(("in_f", "out_f", "groups"), GROUPINGS)
def test_gradcheck_and_equal_to_where_reference_in_float64(
    in_f: int, out_f: int, groups: list[Group]
) -> None:
    layer = _layer(in_f, out_f, groups, torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(groups[-1][2], 3, in_f, generator=gen, dtype=torch.float64, requires_grad=True)
    w, b = layer.weight, layer.bias
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: _GroupedMaskedLinear.apply(x_, w_, b_, layer, groups), (x, w, b)
    )

    out = layer(x)
    grad_y = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (x, w, b), grad_y)
    ref_out = _reference(layer, x, groups)
    want = torch.autograd.grad(ref_out, (x, w, b), grad_y)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)

    # pruned by every masked group (and no dense group): exactly zero gradient
    masks = layer._route.masks
    assert masks is not None
    if all(lang is not None for lang, _, _ in groups):
        kept = torch.zeros(out_f, in_f, dtype=torch.bool)
        for lang, _, _ in groups:
            assert lang is not None
            kept |= masks.get(lang, NAME)
        assert torch.all(got[1][~kept] == 0)
        assert got[1][kept].abs().sum() > 0


def test_frozen_weight_and_no_bias() -> None:
    groups: list[Group] = [("a", 0, 2), ("b", 2, 4)]
    layer = _layer(8, 8, groups, torch.float64, bias=False)
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).sum(), x)
    (want,) = torch.autograd.grad(_reference(layer, x, groups).sum(), x)
    torch.testing.assert_close(gx, want, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_training_path() -> None:
    groups: list[Group] = [("a", 0, 2), ("b", 2, 4)]
    layer = _layer(16, 8, groups, torch.float32)
    x = torch.randn(4, 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        ref = _reference(layer, x, groups)
    assert out.dtype == ref.dtype == torch.bfloat16
    # the bias is added after rounding the product to bf16 here, fused into addmm there
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    gx, gw = torch.autograd.grad(out.float().sum(), (x, layer.weight))
    rx, rw = torch.autograd.grad(ref.float().sum(), (x, layer.weight))
    assert gx.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(gx, rx, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, rw, rtol=2e-2, atol=2e-2)
    masks = layer._route.masks
    assert masks is not None
    pruned = ~(masks.get("a", NAME) | masks.get("b", NAME))
    assert torch.all(gw[pruned] == 0)


def test_masks_re_added_between_forward_and_backward_are_refused() -> None:
    groups: list[Group] = [("a", 0, 1), ("b", 1, 2)]
    layer = _layer(8, 8, groups, torch.float32)
    out = layer(torch.randn(2, 8))
    masks = layer._route.masks
    assert masks is not None
    masks.remove("b")
    masks.add("b", {NAME: torch.ones(8, 8, dtype=torch.bool)})
    with pytest.raises(RuntimeError, match="changed between forward and backward"):
        out.sum().backward()


@pytest.mark.parametrize(("in_f", "out_f", "groups"), GROUPINGS)
@pytest.mark.parametrize("cached", [False, True])
def test_no_grad_path_equals_where_reference(
    in_f: int, out_f: int, groups: list[Group], cached: bool
) -> None:
    layer = _layer(in_f, out_f, groups, torch.float64)
    if cached:
        layer._route.cache = MaskedWeightCache(1 << 20)
    x = torch.randn(groups[-1][2], 3, in_f, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
        again = layer(x)  # from the cache when there is one, rebuilt otherwise
        want = _reference(layer, x, groups)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


@pytest.mark.parametrize("grad", [False, True])
def test_empty_batch_gives_an_empty_output(grad: bool) -> None:
    # no_grad used to index x[0] of an empty batch (IndexError)
    layer = _layer(6, 4, [], torch.float32)
    x = torch.empty(0, 3, 6, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = layer(x)
    assert out.shape == (0, 3, 4)
    if grad:
        gx, gw = torch.autograd.grad(out.sum(), (x, layer.weight))
        assert gx.shape == x.shape and torch.all(gw == 0)


def test_no_grad_under_bf16_autocast_matches_the_training_path() -> None:
    groups: list[Group] = [("a", 0, 2), (None, 2, 3), ("b", 3, 4)]
    layer = _layer(16, 8, groups, torch.float32)
    layer._route.cache = MaskedWeightCache(1 << 20)
    x = torch.randn(4, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = layer(x.requires_grad_(True))
        with torch.no_grad():
            served = layer(x)
    assert served.dtype == trained.dtype == torch.bfloat16
    torch.testing.assert_close(served, trained.detach(), rtol=0, atol=0)
