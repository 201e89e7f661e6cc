"""The masked linear layer: each language group of a sorted batch runs with ``W ⊙ M_lang``.

One helper, :func:`grouped_linear`, computes the grouped product for every path; what
differs between the paths is only where each group's weight comes from (the *weight
provider*):

- without autograd (inference): the route's cache of materialized ``W ⊙ M``, or a
  reusable scratch buffer (:meth:`MaskedLinear.inference_weight`);
- with autograd (training): :class:`_GroupedMaskedLinear`, whose forward and backward
  build ``W ⊙ M`` in scratch buffers (nothing weight-sized is saved for backward);
- under autocast, either of the above on inputs cast to the autocast dtype (what autocast
  does for ``F.linear``), with autocast off inside.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from model.cache import MaskedWeightCache
from model.masks import LanguageMasks

# (language name or None for the dense weights, first row, end row) over the sorted batch
Group = tuple[str | None, int, int]

# language (None: dense) -> that group's weight [out, in], valid until the next call
WeightProvider = Callable[[str | None], Tensor]


class MaskRoute:
    """Routing shared by every MaskedLinear of one model (not a module).

    ``masks`` and ``cache`` are the model's. ``groups``, ``lang_ids`` and the scratch
    buffers belong to the forward that sets them and are kept per thread: forwards may
    run in several threads at once (the server's model threads), each routing its own
    batch, with its own buffers, through the same weights.
    """

    def __init__(
        self, masks: LanguageMasks | None = None, cache: MaskedWeightCache | None = None
    ) -> None:
        self.masks = masks
        self.cache = cache
        self._local = threading.local()

    def __deepcopy__(self, memo: dict[int, Any]) -> MaskRoute:
        # A copied model gets its own masks and no thread's routing; a fresh cache (the
        # cached weights are keyed by the original weights' storage).
        new = MaskRoute()
        memo[id(self)] = new
        new.masks = copy.deepcopy(self.masks, memo)
        if self.cache is not None:
            new.cache = MaskedWeightCache(self.cache.budget_bytes)
        return new

    @property
    def groups(self) -> list[Group] | None:
        """This thread's language groups of the sorted batch (None: no routing)."""
        return getattr(self._local, "groups", None)

    @groups.setter
    def groups(self, groups: list[Group] | None) -> None:
        self._local.groups = groups

    @property
    def lang_ids(self) -> Tensor | None:
        """This thread's ``[B]`` language ids, in the transformer's (sorted) batch order."""
        return getattr(self._local, "lang_ids", None)

    @lang_ids.setter
    def lang_ids(self, lang_ids: Tensor | None) -> None:
        self._local.lang_ids = lang_ids

    @property
    def scratch(self) -> dict[tuple[object, ...], Tensor]:
        """This thread's scratch buffers, keyed by (slot, shape, dtype, device): a
        materialized weight is consumed by one matmul before the next is built, so one
        buffer per shape serves all layers and languages and no large allocation (page
        faults) happens per layer."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = {}
        return scratch

    def buffer(
        self, shape: torch.Size, dtype: torch.dtype, device: torch.device, slot: str
    ) -> Tensor:
        """This thread's reusable ``[*shape]`` scratch tensor of ``slot`` (contents undefined)."""
        scratch = self.scratch
        key = (slot, tuple(shape), dtype, device)
        buf = scratch.get(key)
        if buf is None:
            buf = scratch[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf


def grouped_linear(
    x: Tensor, groups: list[Group], weight_of: WeightProvider, bias: Tensor | None, out_f: int
) -> Tensor:
    """``y[rows of g] = x[rows of g] @ weight_of(g)^T`` for each group, then ``+ bias`` once.

    x ``[B, ..., in]`` with the batch sorted as ``groups`` says (samples ``[first, end)``
    of each group), bias ``[out]`` or None -> ``[B, ..., out]``. Each group's matmul writes
    straight into its rows of one output (no concatenation); ``weight_of`` is called once
    per group, right before its matmul, so it may hand out a scratch buffer that the next
    call overwrites. An empty batch gives an empty output.
    """
    x = x.contiguous()
    in_f = x.shape[-1]
    out = x.new_empty(*x.shape[:-1], out_f)
    rows = x[0].numel() // in_f if x.shape[0] else 0  # tokens per sample
    out2d, x2d = out.view(-1, out_f), x.view(-1, in_f)
    for lang, s, e in groups:
        if e > s:
            torch.mm(x2d[s * rows : e * rows], weight_of(lang).t(), out=out2d[s * rows : e * rows])
    if bias is not None:
        # One bias add over the whole output rather than one bias copy per group
        # (addmm(bias, ..., out=) broadcasts the bias into its output first).
        out2d.add_(bias)
    return out


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by the keep-mask of each language group.

    Parameter names stay ``weight``/``bias`` so state dicts match torchaudio's. Without
    groups on the route (or without masks) it is a plain linear layer.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool, mask_name: str, route: MaskRoute
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.mask_name = mask_name  # this weight's name in LassModel.named_parameters()
        self._route = route

    def scratch_masked_weight(self, language: str, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(``M_language`` as 0/1 in ``weight``'s dtype, ``weight ⊙ M``), both ``[out, in]``.

        Both live in the route's scratch buffers: valid until the next call for this shape.
        A 0/1 mask in the weight's dtype and a product: for finite weights the same values
        as ``where(M, W, 0)`` (up to the sign of zeros, which no sum can see), ~5x faster.
        """
        masks = self._route.masks
        assert masks is not None
        route = self._route
        keep = route.buffer(weight.shape, weight.dtype, weight.device, slot="mask")
        masks.unpack_into(language, self.mask_name, keep)
        out = route.buffer(weight.shape, weight.dtype, weight.device, slot="weight")
        return keep, torch.mul(weight, keep, out=out)

    def inference_weight(self, language: str | None) -> Tensor:
        """``W ⊙ M_language`` ``[out, in]`` for no-grad use (``W`` itself for ``None``).

        From the route's cache when it holds it, else built (and cached when the budget
        allows; otherwise in a scratch buffer valid until the next build of this shape).
        """
        masks = self._route.masks
        if language is None or masks is None:
            return self.weight
        w = self.weight
        cache = self._route.cache
        key = None
        if cache is not None:
            # The version counter and storage make an optimizer step or a reload a miss.
            key = (
                self.mask_name,
                language,
                masks.generation(language),
                w._version,
                w.data_ptr(),
                w.dtype,
            )
            hit = cache.get(key)
            if hit is not None:
                return hit
        if cache is None or key is None or not cache.would_fit(w.numel() * w.element_size()):
            return self.scratch_masked_weight(language, w)[1]
        keep = self._route.buffer(w.shape, w.dtype, w.device, slot="mask")
        masks.unpack_into(language, self.mask_name, keep)
        out = w * keep
        cache.put(key, out)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x ``[B, ..., in]``, batch sorted as ``route.groups`` says -> ``[B, ..., out]``."""
        groups = self._route.groups
        if groups is None or self._route.masks is None:
            return F.linear(x, self.weight, self.bias)
        w: Tensor = self.weight
        b: Tensor | None = self.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Do what autocast does for F.linear (run in the autocast dtype; autograd casts
            # the gradients back), then run the grouped product with autocast off (its
            # out= matmuls would bypass autocast anyway).
            dtype = torch.get_autocast_dtype(device_type)
            x, b = x.to(dtype), b.to(dtype) if b is not None else None
            with torch.autocast(device_type, enabled=False):
                if torch.is_grad_enabled():
                    return _GroupedMaskedLinear.apply(x, w.to(dtype), b, self, groups)
                return grouped_linear(
                    x, groups, lambda g: self.inference_weight(g).to(dtype), b, self.out_features
                )
        if torch.is_grad_enabled():
            return _GroupedMaskedLinear.apply(x, w, b, self, groups)
        return grouped_linear(x, groups, self.inference_weight, b, self.out_features)


class _GroupedMaskedLinear(torch.autograd.Function):
    """``y[rows of g] = x[rows of g] @ (W ⊙ M_g)^T + b`` for each language group ``g``.

    Same values and gradients as ``F.linear`` per group with ``where(M_g, W, 0)`` and
    concatenation, but cheaper:

    - ``M_g`` is a 0/1 mask gathered in the weight's dtype and multiplied (no bool unpack
      plus ``where``), into scratch buffers; the product is :func:`grouped_linear`.
    - Nothing weight-sized is saved for backward (autograd through ``where`` keeps the bool
      mask and ``W ⊙ M_g`` per group): the masks are gathered again from the packed bits,
      which costs about as much as reading a saved float mask.
    - ``grad_W = sum_g (grad_y_g^T @ x_g) ⊙ M_g``, accumulated in one tensor: exactly 0
      where every group's mask is 0 (for finite gradients), the sum over the groups that
      keep a weight otherwise.

    x ``[B, ..., in]`` with the batch sorted as ``groups`` says (``(language or None, first
    sample, end sample)``), weight ``[out, in]``, bias ``[out]`` or None -> ``[B, ..., out]``.
    Once differentiable (no double backward).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        layer: MaskedLinear,
        groups: list[Group],
    ) -> Tensor:
        masks = layer._route.masks
        assert masks is not None

        def weight_of(lang: str | None) -> Tensor:
            return weight if lang is None else layer.scratch_masked_weight(lang, weight)[1]

        x = x.contiguous()
        out = grouped_linear(x, groups, weight_of, bias, weight.shape[0])
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        ctx.masks = masks
        ctx.groups = list(groups)
        # Masks are gathered again in backward: refuse if a language was re-added meanwhile.
        ctx.generations = [masks.generation(g) if g is not None else 0 for g, _, _ in groups]
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        layer: MaskedLinear = ctx.layer
        masks: LanguageMasks = ctx.masks
        out_f, in_f = weight.shape
        rows = x[0].numel() // in_f if x.shape[0] else 0  # tokens per sample
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        go2d = grad_out.contiguous().view(-1, out_f)
        x2d = x.view(-1, in_f)
        grad_x = torch.empty_like(x) if need_x else None
        gx2d = grad_x.view(-1, in_f) if grad_x is not None else None
        grad_w: Tensor | None = None
        for (lang, s, e), gen in zip(ctx.groups, ctx.generations, strict=True):
            go_g, x_g = go2d[s * rows : e * rows], x2d[s * rows : e * rows]
            keep, w = None, weight
            if lang is not None:
                if masks.generation(lang) != gen:
                    raise RuntimeError(f"masks of {lang!r} changed between forward and backward")
                # The forward's mask and W ⊙ M, gathered and multiplied again (cheap).
                keep, w = layer.scratch_masked_weight(lang, weight)
            if gx2d is not None:
                torch.mm(go_g, w, out=gx2d[s * rows : e * rows])
            if need_w:
                g = go_g.t().mm(x_g)  # [out, in]
                if keep is not None:
                    g.mul_(keep)
                grad_w = g if grad_w is None else grad_w.add_(g)
        if need_w and grad_w is None:  # no groups (empty batch)
            grad_w = torch.zeros_like(weight)
        grad_b = go2d.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None
