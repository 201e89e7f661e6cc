"""LassModel: a torchaudio wav2vec 2.0 backbone whose prunable linears run per-language masks.

The conv feature encoder, feature projection, positional convolution and norms come from
``torchaudio.models.wav2vec2_model`` unchanged and run once for the whole batch. Every
linear layer in the prunable scope is a :class:`~model.masked_linear.MaskedLinear`
(``model/masked_linear.py``): for a batch sorted by language it computes each language's
contiguous slice with ``W ⊙ M_lang``. Because the
mask multiplies the weight inside autograd, a pruned weight gets exactly zero gradient and
a weight kept by several languages accumulates the sum of their gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from model.cache import MaskedWeightCache
from model.config import BackboneConfig, LidInput, check_lid_input
from model.masked_linear import Group, MaskedLinear, MaskRoute
from model.masks import DEFAULT_SCOPE, LanguageMasks, prunable_parameter_names


@dataclass
class ModelOutput:
    """Result of :meth:`LassModel.forward`."""

    logits: Tensor  # [B, F, V] CTC logits over the whole vocabulary
    lengths: Tensor  # [B] valid frames per sample
    hidden: Tensor  # [B, F, D] last encoder layer
    # [B, L] language identification, when this pass computed the LID head's input: always
    # for a "features" head, only in a dense pass (lang_ids None) for an "encoder" head
    lid_logits: Tensor | None


class LanguageIdHead(nn.Module):
    """Frames -> (per-frame MLP) -> statistics pooling (mean, std over valid frames) -> MLP
    -> language logits.

    ``frame_width`` 0 pools the normalized input frames directly (the ``"features"`` head);
    otherwise a two-layer per-frame MLP of that width comes first, so the pooled statistics
    are of non-linear frame features (e.g. how often a language's sounds occur).
    """

    def __init__(self, input_dim: int, num_languages: int, hidden: int = 256, frame_width: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.frame = (
            nn.Sequential(
                nn.Linear(input_dim, frame_width),
                nn.GELU(),
                nn.Linear(frame_width, frame_width),
                nn.GELU(),
            )
            if frame_width
            else nn.Identity()
        )
        pooled = frame_width or input_dim
        self.mlp = nn.Sequential(
            nn.Linear(2 * pooled, hidden), nn.GELU(), nn.Linear(hidden, num_languages)
        )

    def forward(self, frames: Tensor, lengths: Tensor | None) -> Tensor:
        """frames ``[B, F, C]``, lengths ``[B]`` valid frames -> logits ``[B, L]``."""
        x = self.frame(self.norm(frames))
        b, f, _ = x.shape
        if lengths is None:
            valid = torch.ones(b, f, 1, dtype=x.dtype, device=x.device)
        else:
            valid = (torch.arange(f, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[
                ..., None
            ]
        n = valid.sum(dim=1).clamp_min(1.0)
        mean = (x * valid).sum(dim=1) / n
        var = (((x - mean[:, None]) * valid) ** 2).sum(dim=1) / n
        return self.mlp(torch.cat([mean, (var + 1e-5).sqrt()], dim=-1))


def normalize_waveforms(waveforms: Tensor, lengths: Tensor | None, eps: float = 1e-7) -> Tensor:
    """``[B, T]`` -> zero mean, unit variance per row over its first ``lengths[b]`` samples.

    Padding stays zero, so a sample normalizes the same alone or in a padded batch
    (the statistics of HF's ``Wav2Vec2FeatureExtractor(do_normalize=True)``).
    """
    x = waveforms.float()
    if lengths is None:
        valid = torch.ones_like(x, dtype=torch.bool)
    else:
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    count = valid.sum(1, keepdim=True).clamp_min(1)
    xz = x * valid
    mean = xz.sum(1, keepdim=True) / count
    var = ((x - mean) * valid).pow(2).sum(1, keepdim=True) / count
    out = (x - mean) / torch.sqrt(var + eps)
    return (out * valid).to(waveforms.dtype)


def _init_linear(module: nn.Module) -> None:
    # BERT-style initialisation, as wav2vec 2.0 uses for its transformer.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class LassModel(nn.Module):
    """wav2vec 2.0 backbone + CTC head (+ LID head) with per-language sparse sub-networks."""

    def __init__(
        self,
        config: BackboneConfig,
        vocab_size: int,
        languages: Sequence[str],
        scope: Sequence[str] = DEFAULT_SCOPE,
        lid_head: bool = True,
        lid_input: LidInput = "features",
    ):
        super().__init__()
        self.lid_input = check_lid_input(lid_input)  # what the LID head reads
        self.config = config
        self.languages: list[str] = list(languages)
        if len(set(self.languages)) != len(self.languages):
            raise ValueError(f"duplicate languages: {self.languages}")
        self.scope: tuple[str, ...] = tuple(scope)
        self.vocab_size = vocab_size
        backbone = torchaudio.models.wav2vec2_model(**config.torchaudio_kwargs(), aux_num_out=None)
        self.feature_extractor = backbone.feature_extractor
        self.encoder = backbone.encoder
        dim = config.encoder_embed_dim
        # Learned vector that replaces time-masked frames in the pre-training objective.
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
        self.ctc_head = nn.Linear(dim, vocab_size)
        self.lid_head: LanguageIdHead | None = None
        if lid_head and self.languages:
            self.replace_lid_head(lid_input)
        self.encoder.apply(_init_linear)
        _init_linear(self.ctc_head)
        self._route = MaskRoute()
        self._install_masked_linears()

    def replace_lid_head(self, lid_input: LidInput) -> None:
        """A fresh (untrained) LID head reading ``lid_input`` (one of ``LID_INPUTS``), in the
        model's device, dtype and train/eval mode."""
        lid_input = check_lid_input(lid_input)
        if not self.languages:
            raise ValueError("a model without languages has no LID head")
        n = len(self.languages)
        head = (
            LanguageIdHead(self.config.feature_dim, n)
            if lid_input == "features"
            else LanguageIdHead(self.config.encoder_embed_dim, n, frame_width=512)
        )
        like = self.ctc_head.weight
        head.to(like.device, like.dtype).train(self.training)
        self.lid_head, self.lid_input = head, lid_input

    # ----------------------------------------------------------------- masks
    def _install_masked_linears(self) -> None:
        for name in prunable_parameter_names(self, self.scope):
            path = name.removesuffix(".weight")
            parent_path, _, attr = path.rpartition(".")
            parent = self.get_submodule(parent_path) if parent_path else self
            old = getattr(parent, attr)
            new = MaskedLinear(
                old.in_features, old.out_features, old.bias is not None, name, self._route
            ).to(old.weight.device, old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            setattr(parent, attr, new)

    def prunable_shapes(self) -> dict[str, torch.Size]:
        """``{parameter name: shape}`` of every weight in the prunable scope, in model order."""
        params = dict(self.named_parameters())
        return {
            m.mask_name: params[m.mask_name].shape
            for m in self.modules()
            if isinstance(m, MaskedLinear)
        }

    @property
    def masks(self) -> LanguageMasks | None:
        """The language masks in use (None: dense model)."""
        return self._route.masks

    def set_masks(self, masks: LanguageMasks | None) -> None:
        """Use ``masks`` (moved to the model's device); shapes must match the prunable scope."""
        if masks is not None:
            expected = self.prunable_shapes()
            if dict(masks.shapes) != expected:
                diff = sorted(set(masks.shapes.items()) ^ set(expected.items()))[:3]
                raise ValueError(f"mask shapes do not match the model's prunable tensors: {diff}")
            masks.to(self.mask_embedding.device)
        self._route.masks = masks

    @property
    def routed_lang_ids(self) -> Tensor | None:
        """During the transformer pass: ``lang_ids [B]`` in the order the batch runs in there.

        With masks set the batch is sorted by language inside the transformer (and put back
        afterwards); hooks on transformer layers must index samples with this, not with the
        caller's ``lang_ids``. None outside a forward or without ``lang_ids``.
        """
        return self._route.lang_ids

    def set_weight_cache(self, budget_bytes: int | None) -> MaskedWeightCache | None:
        """Cache materialized ``W ⊙ M`` for no-grad forwards within ``budget_bytes`` (None: off)."""
        self._route.cache = MaskedWeightCache(budget_bytes) if budget_bytes else None
        return self._route.cache

    @property
    def weight_cache(self) -> MaskedWeightCache | None:
        """The materialized-weight cache, when enabled."""
        return self._route.cache

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Keep the packed masks on the same device as the weights (model.to(...), .cuda()).
        out = super()._apply(fn, recurse)
        if self._route.masks is not None:
            self._route.masks.to(self.mask_embedding.device)
        return out

    # -------------------------------------------------------------- forward
    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Samples ``[B]`` -> valid encoder frames ``[B]`` (conv arithmetic, floor, >= 0)."""
        for _, kernel, stride in self.config.extractor_conv_layer_config:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
            lengths = lengths.clamp_min(0)
        return lengths

    def extract_features(
        self, waveforms: Tensor, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """waveforms ``[B, T]`` -> conv features ``[B, F, C]`` (before projection), frames ``[B]``.

        With ``config.normalize_waveform`` each waveform is first brought to zero mean and
        unit variance over its valid samples (padding stays zero), so gain does not matter.

        With the group-norm extractor the first layer's normalisation statistics are taken
        over each sample's valid frames only, so padding does not change a sample's features.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [batch, time], got {tuple(waveforms.shape)}")
        if self.config.normalize_waveform:
            waveforms = normalize_waveforms(waveforms, lengths)
        x = waveforms.unsqueeze(1)
        frames = lengths
        padded = lengths is not None and bool((lengths < waveforms.shape[1]).any())
        for i, layer in enumerate(self.feature_extractor.conv_layers):
            if i == 0 and padded and self.config.extractor_mode == "group_norm":
                x, frames = self._masked_group_norm_block(layer, x, frames)
            else:
                x, frames = layer(x, frames)
        return x.transpose(1, 2), frames

    @staticmethod
    def _masked_group_norm_block(
        layer: nn.Module, x: Tensor, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """torchaudio's first ConvLayerBlock with its GroupNorm restricted to valid frames.

        x ``[B, 1, T]``, lengths ``[B]`` samples -> ``[B, C, T']``, frames ``[B]``.
        """
        assert lengths is not None
        conv: nn.Conv1d = layer.conv  # type: ignore[assignment]
        norm: nn.GroupNorm = layer.layer_norm  # type: ignore[assignment]
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        y = conv(x)  # [B, C, T']
        frames = (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp_min(0)
        steps = torch.arange(y.shape[-1], device=y.device)
        valid = (steps[None, :] < frames[:, None]).to(y.dtype)[:, None]  # [B, 1, T']
        n = valid.sum(dim=-1, keepdim=True).clamp_min(1.0)
        mean = (y * valid).sum(dim=-1, keepdim=True) / n
        var = (((y - mean) * valid) ** 2).sum(dim=-1, keepdim=True) / n
        y = (y - mean) / torch.sqrt(var + norm.eps)
        y = y * norm.weight[None, :, None] + norm.bias[None, :, None]
        return F.gelu(y), frames

    def _plan(
        self, lang_ids: Tensor | None, batch: int
    ) -> tuple[Tensor | None, list[Group] | None]:
        """Sort order (None when already sorted) and language groups of the sorted batch."""
        if lang_ids is None or self._route.masks is None:
            return None, None
        if lang_ids.shape != (batch,):
            raise ValueError(f"lang_ids must have shape [{batch}], got {tuple(lang_ids.shape)}")
        ids = lang_ids.tolist()
        order_list = sorted(range(batch), key=lambda i: ids[i])
        groups: list[Group] = []
        for pos, i in enumerate(order_list):
            lid = ids[i]
            if lid >= len(self.languages):
                raise ValueError(f"lang_id {lid} out of range for {len(self.languages)} languages")
            lang = self.languages[lid] if lid >= 0 else None  # negative id: dense weights
            if lang is not None and lang not in self._route.masks:
                raise KeyError(f"language {lang!r} has no masks")
            if groups and groups[-1][0] == lang:
                groups[-1] = (lang, groups[-1][1], pos + 1)
            else:
                groups.append((lang, pos, pos + 1))
        if order_list == list(range(batch)):
            return None, groups
        return torch.tensor(order_list, device=lang_ids.device), groups

    def _run_transformer(
        self,
        features: Tensor,
        lengths: Tensor | None,
        lang_ids: Tensor | None,
        time_mask: Tensor | None,
        with_head: bool,
    ) -> tuple[Tensor, Tensor | None]:
        x = self.encoder.feature_projection(features)
        if time_mask is not None:
            x = torch.where(time_mask[..., None], self.mask_embedding.to(x.dtype), x)
        order, groups = self._plan(lang_ids, x.shape[0])
        if order is not None:
            x = x[order]
            lengths = lengths[order] if lengths is not None else None
        attn_mask = None
        if lengths is not None and bool((lengths < x.shape[1]).any()):
            b, f, _ = x.shape
            pad = torch.arange(f, device=x.device)[None, :] >= lengths[:, None]  # [B, F]
            x = x.masked_fill(pad[..., None], 0.0)
            # Additive like torchaudio (-1e4, not -inf): a zero-length sample gives no NaN.
            attn_mask = (pad.to(x.dtype) * -10000.0)[:, None, None, :].expand(b, 1, f, f)
        self._route.groups = groups
        self._route.lang_ids = (
            None if lang_ids is None else lang_ids[order] if order is not None else lang_ids
        )
        try:
            hidden = self.encoder.transformer(x, attention_mask=attn_mask)
            logits = self.ctc_head(hidden) if with_head else None
        finally:
            self._route.groups = None
            self._route.lang_ids = None
        if order is not None:
            inverse = torch.argsort(order)
            hidden = hidden[inverse]
            logits = logits[inverse] if logits is not None else None
        return hidden, logits

    def encode(
        self,
        features: Tensor,
        lengths: Tensor | None,
        lang_ids: Tensor | None,
        time_mask: Tensor | None = None,
    ) -> Tensor:
        """Conv features ``[B, F, C]`` -> hidden ``[B, F, D]``.

        Feature projection; frames where ``time_mask [B, F]`` is True become the learned mask
        embedding; positional conv; transformer with each sample's language masks
        (``lang_ids [B]`` index :attr:`languages`; negative or None = dense weights).
        """
        hidden, _ = self._run_transformer(features, lengths, lang_ids, time_mask, with_head=False)
        return hidden

    def identify_language(self, waveforms: Tensor, lengths: Tensor | None) -> Tensor:
        """waveforms ``[B, T]`` -> LID logits ``[B, L]`` over :attr:`languages`.

        The ``"encoder"`` head costs a dense transformer pass (every weight, no mask: the
        language is what we are asking for).
        """
        if self.lid_head is None:
            raise RuntimeError("this model has no language identification head")
        features, frames = self.extract_features(waveforms, lengths)
        if self.lid_input == "encoder":
            features = self.encode(features, frames, None)
        return self.lid_head(features, frames)

    def forward(
        self, waveforms: Tensor, lengths: Tensor | None = None, lang_ids: Tensor | None = None
    ) -> ModelOutput:
        """waveforms ``[B, T]`` at 16 kHz (zero-padded), lengths ``[B]`` samples, lang_ids ``[B]``.

        ``lang_ids`` None -> dense forward. Samples of different languages mix freely.
        """
        features, frames = self.extract_features(waveforms, lengths)
        if frames is None:
            frames = torch.full(
                (waveforms.shape[0],), features.shape[1], dtype=torch.long, device=waveforms.device
            )
        return self.forward_features(features, frames, lang_ids)

    def forward_features(
        self, features: Tensor, frames: Tensor, lang_ids: Tensor | None = None
    ) -> ModelOutput:
        """:meth:`forward` from conv features ``[B, F, C]`` and valid frames ``[B]`` on
        (what :meth:`extract_features` gives, or a compiled equivalent: model/compiled.py)."""
        hidden, logits = self._run_transformer(features, frames, lang_ids, None, with_head=True)
        assert logits is not None
        lid = None
        if self.lid_head is not None:
            if self.lid_input == "features":
                lid = self.lid_head(features, frames)
            elif lang_ids is None:  # this pass is the dense one the "encoder" head reads
                lid = self.lid_head(hidden, frames)
        return ModelOutput(logits=logits, lengths=frames, hidden=hidden, lid_logits=lid)
