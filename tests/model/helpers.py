"""Small models and random masks shared by the model-core tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.config import BackboneConfig
from model.masks import LanguageMasks
from model.network import LassModel

LANGS = ["en", "de", "es", "it"]


def micro_config(
    extractor_mode: str = "layer_norm",
    layer_norm_first: bool = True,
    dropout: float = 0.0,
    normalize_waveform: bool = False,
) -> BackboneConfig:
    """A few-hundred-thousand-parameter backbone with the real 320-sample frame stride."""
    return BackboneConfig(
        name="micro",
        extractor_mode=extractor_mode,  # type: ignore[arg-type]
        extractor_conv_layer_config=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
        extractor_conv_bias=extractor_mode == "layer_norm",
        encoder_embed_dim=64,
        encoder_projection_dropout=dropout,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=2,
        encoder_num_heads=4,
        encoder_attention_dropout=dropout,
        encoder_ff_interm_features=128,
        encoder_ff_interm_dropout=dropout,
        encoder_dropout=dropout,
        encoder_layer_norm_first=layer_norm_first,
        encoder_layer_drop=0.0,
        normalize_waveform=normalize_waveform,
    )


def random_masks(
    model: LassModel, languages: Sequence[str], density: float = 0.6, seed: int = 0
) -> LanguageMasks:
    """Independent Bernoulli(density) keep-masks per language."""
    gen = torch.Generator().manual_seed(seed)
    masks = LanguageMasks(model.prunable_shapes())
    for lang in languages:
        masks.add(
            lang, {n: torch.rand(s, generator=gen) < density for n, s in masks.shapes.items()}
        )
    return masks


def micro_model(
    vocab_size: int = 12, languages: Sequence[str] = LANGS, seed: int = 0, **cfg: object
) -> LassModel:
    torch.manual_seed(seed)
    model = LassModel(micro_config(**cfg), vocab_size=vocab_size, languages=languages)  # type: ignore[arg-type]
    # Non-zero biases and norm affines, so a test cannot pass by accident of the init.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model
