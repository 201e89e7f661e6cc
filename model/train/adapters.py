"""MMS-style per-language bottleneck adapters: the parameter-efficient baseline.

After every transformer layer, each sample's hidden states pass through its
language's small residual bottleneck (LayerNorm -> down -> ReLU -> up), as in MMS
(Pratap et al. 2023). Only the adapters and the CTC head train. The up-projection
starts at zero, so an untrained adapter is the identity.

Adapters hook into a LassModel without changing it: a forward pre-hook on the model
records the batch's ``lang_ids``, a forward hook on each transformer layer adds the
adapters' output. Any caller of ``model(waveforms, lengths, lang_ids)`` (the
evaluator included) therefore runs the adapted model. Bundles have no adapters, so
this baseline is evaluated in the trainer and never exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from model.network import LassModel


class Bottleneck(nn.Module):
    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[b, F, D]`` -> residual ``x + up(relu(down(norm(x))))``."""
        return x + self.up(torch.relu(self.down(self.norm(x))))


class LanguageAdapters(nn.Module):
    """``adapters[language][layer]``: one bottleneck per language per transformer layer."""

    def __init__(self, languages: Sequence[str], num_layers: int, dim: int, bottleneck: int):
        super().__init__()
        self.languages = list(languages)
        self.adapters = nn.ModuleDict(
            {
                lang: nn.ModuleList(Bottleneck(dim, bottleneck) for _ in range(num_layers))
                for lang in self.languages
            }
        )
        self._lang_ids: Tensor | None = None
        self._handles: list[RemovableHandle] = []

    @classmethod
    def for_model(cls, model: LassModel, bottleneck: int) -> LanguageAdapters:
        cfg = model.config
        adapters = cls(model.languages, cfg.encoder_num_layers, cfg.encoder_embed_dim, bottleneck)
        return adapters.to(next(model.parameters()).device)

    def apply_layer(self, layer: int, x: Tensor) -> Tensor:
        """x ``[B, F, D]`` of one transformer layer -> each sample through its adapter."""
        if self._lang_ids is None:
            raise RuntimeError("language adapters need lang_ids in the model call")
        out = torch.empty_like(x)
        for lid in self._lang_ids.unique().tolist():
            rows = (self._lang_ids == lid).nonzero(as_tuple=True)[0]
            stack: nn.ModuleList = self.adapters[self.languages[lid]]  # type: ignore[assignment]
            out[rows] = stack[layer](x[rows])
        return out

    def attach(self, model: LassModel) -> None:
        """Hook into ``model`` and register as its ``adapters`` submodule (trained with it)."""
        if self._handles:
            raise RuntimeError("adapters are already attached")
        model.add_module("adapters", self)

        def remember(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            lang_ids = kwargs.get("lang_ids", args[2] if len(args) > 2 else None)
            self._lang_ids = lang_ids

        self._handles.append(model.register_forward_pre_hook(remember, with_kwargs=True))
        for i, layer in enumerate(model.encoder.transformer.layers):
            self._handles.append(layer.register_forward_hook(self._layer_hook(i)))

    def _layer_hook(self, index: int) -> Any:
        def hook(_: nn.Module, __: Any, output: tuple[Tensor, Any]) -> tuple[Tensor, Any]:
            x, position_bias = output
            return self.apply_layer(index, x), position_bias

        return hook

    def detach_from(self, model: LassModel) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(model, "adapters", None) is self:
            delattr(model, "adapters")
