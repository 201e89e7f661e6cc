"""Loading local Hugging Face wav2vec2 checkpoints: numerical equivalence and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from model.checkpoint_hf import UnsupportedCheckpoint, hf_config_to_lass, load_hf_wav2vec2
from model.network import LassModel

transformers = pytest.importorskip("transformers")


def _hf_config(norm: str, stable: bool, **extra: object) -> Any:
    return transformers.Wav2Vec2Config(
        vocab_size=12,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16),
        conv_kernel=(10, 3, 3, 2),
        conv_stride=(5, 2, 2, 2),
        conv_bias=norm == "layer",
        feat_extract_norm=norm,
        do_stable_layer_norm=stable,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        mask_time_prob=0.05,
        **extra,
    )


@pytest.mark.parametrize(
    ("norm", "stable", "safe"),
    [("layer", True, True), ("group", False, True), ("group", True, False)],
)
def test_matches_transformers(tmp_path: Path, norm: str, stable: bool, safe: bool) -> None:
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2ForCTC(_hf_config(norm, stable)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so every mapped tensor matters
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    (tmp_path / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(12)}))
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()

    config, state, tokens = load_hf_wav2vec2(tmp_path)
    assert tokens == [f"t{i}" for i in range(12)]
    assert config.extractor_mode == {"layer": "layer_norm", "group": "group_norm"}[norm]
    assert config.encoder_layer_norm_first is stable
    model = LassModel(config, vocab_size=12, languages=[], lid_head=False).eval()
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == []

    waves = torch.randn(2, 6000)
    with torch.no_grad():
        ours = model(waves)
        theirs_hidden = hf.wav2vec2(waves).last_hidden_state
        theirs_logits = hf(waves).logits
    assert ours.hidden.shape == theirs_hidden.shape
    assert (ours.hidden - theirs_hidden).abs().max().item() <= 1e-4
    assert (ours.logits - theirs_logits).abs().max().item() <= 1e-4


def test_feature_extractor_normalization_follows_the_preprocessor_config(tmp_path: Path) -> None:
    hf = transformers.Wav2Vec2ForCTC(_hf_config("layer", True)).eval()
    hf.save_pretrained(tmp_path)
    config, state, _ = load_hf_wav2vec2(tmp_path)
    assert config.normalize_waveform is False, "no preprocessor config: samples as given"
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    extractor.save_pretrained(tmp_path)
    config, state, _ = load_hf_wav2vec2(tmp_path)
    assert config.normalize_waveform is True
    model = LassModel(config, vocab_size=12, languages=[], lid_head=False).eval()
    model.load_state_dict(state, strict=False)
    wave = 0.3 * torch.randn(6000) + 0.05
    inputs = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ours = model(wave[None]).logits
        theirs = hf(inputs.input_values).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_backbone_only_checkpoint_has_no_ctc_head(tmp_path: Path) -> None:
    transformers.Wav2Vec2Model(_hf_config("layer", True)).save_pretrained(tmp_path)
    _, state, tokens = load_hf_wav2vec2(tmp_path)
    assert tokens is None
    assert not any(k.startswith("ctc_head") for k in state)
    assert "encoder.transformer.layers.1.feed_forward.output_dense.weight" in state


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("feat_extract_activation", "relu"),
        ("hidden_act", "gelu_new"),
        ("add_adapter", True),
        ("adapter_attn_dim", 16),
        ("layer_norm_eps", 1e-6),
        ("feat_extract_norm", "batch"),
        ("model_type", "hubert"),
    ],
)
def test_refuses_what_lass_cannot_represent(field: str, value: object) -> None:
    hf = _hf_config("layer", True).to_dict()
    hf[field] = value
    with pytest.raises(UnsupportedCheckpoint, match=field) as info:
        hf_config_to_lass(hf)
    assert info.value.field == field and info.value.value == value


def test_refusal_from_a_directory(tmp_path: Path) -> None:
    transformers.Wav2Vec2Model(_hf_config("layer", True)).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["feat_extract_activation"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedCheckpoint, match="feat_extract_activation='relu'"):
        load_hf_wav2vec2(tmp_path)


def test_pretraining_checkpoint_drops_quantizer_and_projections(tmp_path: Path) -> None:
    cfg = _hf_config("layer", True, codevector_dim=16, proj_codevector_dim=16)
    transformers.Wav2Vec2ForPreTraining(cfg).save_pretrained(tmp_path)
    config, state, _ = load_hf_wav2vec2(tmp_path)
    model = LassModel(config, vocab_size=12, languages=[], lid_head=False)
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {"ctc_head.weight", "ctc_head.bias"}
