"""Vocabulary (alphabets per language) and the backbone presets."""

from __future__ import annotations

import pytest

from model.config import PRESETS, BackboneConfig, get_preset
from model.vocab import BLANK, Vocabulary


def _vocab() -> Vocabulary:
    return Vocabulary.build({"en": ["The cat, sat!", "don’t"], "de": ["Schön grüß"], "es": ["Año"]})


def test_build_tokens_and_alphabets() -> None:
    v = _vocab()
    assert v.tokens[0] == BLANK and v.tokens[1] == " "
    assert v.languages == ["de", "en", "es"]
    assert "ö" in v.alphabets["de"] and "ö" not in v.alphabets["en"]
    assert "'" in v.alphabets["en"] and "," not in v.tokens
    assert all(" " in a for a in v.alphabets.values())


def test_normalize_encode_decode() -> None:
    v = _vocab()
    assert v.normalize("  The  CAT—sat, ñ! ", "en") == "the cat sat"
    text = v.normalize("Schön", "de")
    ids = v.encode(text, "de")
    assert v.decode(ids) == "schön"
    with pytest.raises(ValueError, match="'ö'"):
        v.encode("schön", "en")
    with pytest.raises(KeyError, match="fr"):
        v.normalize("x", "fr")
    assert Vocabulary.from_dict(v.to_dict()) == v


def test_language_token_ids_are_blank_plus_alphabet() -> None:
    v = _vocab()
    ids = v.language_token_ids("es")
    assert ids[0] == 0 and sorted(v.tokens[i] for i in ids[1:]) == sorted(v.alphabets["es"])


def test_presets() -> None:
    for name, cfg in PRESETS.items():
        assert cfg.frame_stride == 320, name
        assert BackboneConfig.from_dict(cfg.to_dict()) == cfg
    assert get_preset("xls-r-300m").encoder_num_layers == 24
    assert get_preset("xls-r-1b").encoder_embed_dim == 1280
    assert get_preset("xls-r-2b").encoder_ff_interm_features == 7680
    assert get_preset("base").extractor_mode == "group_norm"
    # wav2vec 2.0 base took raw samples; XLS-R and our tiny model take normalized ones.
    assert not get_preset("base").normalize_waveform
    assert get_preset("tiny").normalize_waveform and get_preset("xls-r-300m").normalize_waveform
    old = get_preset("tiny").to_dict()
    del old["normalize_waveform"]  # a config written before the field existed
    assert BackboneConfig.from_dict(old).normalize_waveform is False
    with pytest.raises(ValueError, match="missing keys"):
        BackboneConfig.from_dict({k: v for k, v in old.items() if k != "encoder_num_layers"})
    with pytest.raises(ValueError, match="unknown"):
        get_preset("huge")


def test_tiny_and_base_parameter_counts() -> None:
    from model.network import LassModel

    tiny = LassModel(get_preset("tiny"), vocab_size=40, languages=["en"], lid_head=False)
    n = sum(p.numel() for p in tiny.parameters())
    assert 5.0e6 < n < 6.5e6
