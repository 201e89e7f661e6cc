"""Load a local Hugging Face wav2vec 2.0 directory (XLS-R, MMS base, fine-tuned CTC) into lass.

Reads ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) of a
``Wav2Vec2Model``, ``Wav2Vec2ForPreTraining`` or ``Wav2Vec2ForCTC``; never touches the
network and never imports ``transformers``. Parameter names are mapped onto
torchaudio's wav2vec2 layout, which LassModel keeps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from model.config import BackboneConfig


class UnsupportedCheckpoint(Exception):  # noqa: N818  (a public name: callers catch it)
    """A checkpoint configuration lass cannot represent; names the field and its value."""

    def __init__(self, field: str, value: Any, reason: str = "not supported by lass"):
        super().__init__(f"{field}={value!r}: {reason}")
        self.field = field
        self.value = value


# (config field, value lass needs): anything else changes the computation.
_REQUIRED: tuple[tuple[str, Any], ...] = (
    ("model_type", "wav2vec2"),
    ("feat_extract_activation", "gelu"),
    ("hidden_act", "gelu"),
    ("layer_norm_eps", 1e-5),
    ("add_adapter", False),
    ("adapter_attn_dim", None),
    ("position_embeddings_type", None),
)
_NORMS = {"group": "group_norm", "layer": "layer_norm"}
_PREFIXES = ("wav2vec2.",)
# Pre-training heads lass does not use (the quantizer and projections of the contrastive task).
_IGNORED = ("quantizer.", "project_q.", "project_hid.")


def hf_config_to_lass(hf: dict[str, Any], name: str = "hf") -> BackboneConfig:
    """Translate a Hugging Face ``Wav2Vec2Config`` dict; UnsupportedCheckpoint if impossible."""
    for key, needed in _REQUIRED:
        value = hf.get(key, needed)
        if value != needed:
            raise UnsupportedCheckpoint(key, value, f"lass needs {needed!r}")
    norm = hf.get("feat_extract_norm", "group")
    if norm not in _NORMS:
        raise UnsupportedCheckpoint("feat_extract_norm", norm, "expected 'group' or 'layer'")
    dims, kernels, strides = hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"]
    if not len(dims) == len(kernels) == len(strides):
        raise UnsupportedCheckpoint(
            "conv_dim", dims, "conv_dim, conv_kernel, conv_stride differ in length"
        )
    if hf.get("num_feat_extract_layers", len(dims)) != len(dims):
        raise UnsupportedCheckpoint("num_feat_extract_layers", hf["num_feat_extract_layers"])
    try:
        return BackboneConfig(
            name=name,
            extractor_mode=_NORMS[norm],  # type: ignore[arg-type]
            extractor_conv_layer_config=tuple(
                (int(c), int(k), int(s)) for c, k, s in zip(dims, kernels, strides, strict=True)
            ),
            extractor_conv_bias=bool(hf.get("conv_bias", False)),
            encoder_embed_dim=int(hf["hidden_size"]),
            encoder_projection_dropout=float(hf.get("feat_proj_dropout", 0.0)),
            encoder_pos_conv_kernel=int(hf["num_conv_pos_embeddings"]),
            encoder_pos_conv_groups=int(hf["num_conv_pos_embedding_groups"]),
            encoder_num_layers=int(hf["num_hidden_layers"]),
            encoder_num_heads=int(hf["num_attention_heads"]),
            encoder_attention_dropout=float(hf.get("attention_dropout", 0.0)),
            encoder_ff_interm_features=int(hf["intermediate_size"]),
            encoder_ff_interm_dropout=float(hf.get("activation_dropout", 0.0)),
            encoder_dropout=float(hf.get("hidden_dropout", 0.0)),
            encoder_layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
            encoder_layer_drop=float(hf.get("layerdrop", 0.0)),
        )
    except ValueError as exc:  # e.g. hidden_size not divisible by the heads
        raise UnsupportedCheckpoint("hidden_size", hf.get("hidden_size"), str(exc)) from exc


def _rename(key: str) -> str | None:
    """HF parameter name -> LassModel name; None for tensors lass does not use."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key.startswith(_IGNORED):
        return None
    if key.startswith("lm_head."):
        return "ctc_head." + key[len("lm_head.") :]
    if key == "masked_spec_embed":
        return "mask_embedding"
    if key.startswith("feature_extractor.") or key.startswith("encoder.feature_projection."):
        return key
    if key.startswith("feature_projection."):
        return "encoder." + key
    if key.startswith("encoder."):
        rest = key[len("encoder.") :]
        rest = rest.replace(
            "pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0"
        )
        rest = rest.replace(
            "pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1"
        )
        return "encoder.transformer." + rest
    return None


def _load_weights(directory: Path) -> dict[str, Tensor]:
    st = directory / "model.safetensors"
    if st.is_file():
        return load_file(str(st))
    pt = directory / "pytorch_model.bin"
    if pt.is_file():
        state = torch.load(pt, map_location="cpu", weights_only=True)
        return dict(state)
    raise FileNotFoundError(f"{directory}: neither model.safetensors nor pytorch_model.bin")


def _vocab_tokens(directory: Path) -> list[str] | None:
    file = directory / "vocab.json"
    if not file.is_file():
        return None
    vocab = json.loads(file.read_text())
    if vocab and all(
        isinstance(v, dict) for v in vocab.values()
    ):  # multilingual MMS: lang -> vocab
        return None
    return [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def load_hf_wav2vec2(directory: Path) -> tuple[BackboneConfig, dict[str, Tensor], list[str] | None]:
    """Local HF wav2vec2 dir -> (lass config, LassModel-compatible state dict, HF vocab tokens).

    The state dict holds the backbone (and ``ctc_head`` for ``Wav2Vec2ForCTC``); LassModel
    parameters HF does not have (LID head, sometimes the mask embedding) are absent: load
    with ``strict=False``. UnsupportedCheckpoint names a config field lass cannot represent.
    """
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: missing")
    hf = json.loads(config_file.read_text())
    config = hf_config_to_lass(hf, name=directory.name or "hf")
    # The HF model takes samples as given; its feature extractor (preprocessor_config.json)
    # says whether they were normalized in pre-training (XLS-R: yes). lass does it inside.
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        do_normalize = bool(json.loads(pre.read_text()).get("do_normalize", False))
        config = replace(config, normalize_waveform=do_normalize)
    state: dict[str, Tensor] = {}
    for key, tensor in _load_weights(directory).items():
        new = _rename(key)
        if new is not None:
            state[new] = tensor
    if not any(k.startswith("encoder.transformer.layers.") for k in state):
        raise UnsupportedCheckpoint(
            "weights", sorted(state)[:3], "no wav2vec2 encoder layers found"
        )
    return config, state, _vocab_tokens(directory)
