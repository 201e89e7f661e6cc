"""Bundle format: round trip, atomic writing, and each refusal of the reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.beam_search import sidecar_path, sidecar_unigrams
from model.bundle import BUNDLE_FORMAT_VERSION, BundleError, read_bundle, write_bundle
from model.masks import LanguageMasks
from model.network import LassModel
from model.vocab import Vocabulary
from tests.model.helpers import micro_model, random_masks

LANGS = ["en", "de", "es"]


def _parts() -> tuple[LassModel, Vocabulary, LanguageMasks]:
    vocab = Vocabulary.build({"en": ["hello world"], "de": ["grüße welt"], "es": ["hola señor"]})
    model = micro_model(vocab_size=len(vocab), languages=LANGS)
    masks = random_masks(model, LANGS)
    model.set_masks(masks)
    return model, vocab, masks


def _write(tmp_path: Path, **kw: object) -> Path:
    model, vocab, masks = _parts()
    lm = tmp_path / "en.arpa"
    lm.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\t<s>\n\n\\end\\\n")
    return write_bundle(
        tmp_path / "bundle",
        model,
        vocab,
        masks,
        provenance={"trainer": "test"},
        metrics={"cer": {"en": 0.5}},
        lm_files={"en": lm},
        **kw,  # type: ignore[arg-type]
    )


def _rehash(bundle: Path, rel: str) -> None:
    """Make the manifest's checksum agree with a file a test rewrote."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][rel] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(bundle: Path, edit: object) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)  # type: ignore[operator]
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip(tmp_path: Path) -> None:
    model, vocab, masks = _parts()
    path = _write(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    bundle = read_bundle(path)
    assert bundle.vocab == vocab
    assert bundle.model.languages == LANGS and not bundle.model.training
    assert bundle.lm_paths["en"] == path / "lm" / "en.arpa"
    manifest = bundle.manifest
    assert manifest["format_version"] == BUNDLE_FORMAT_VERSION
    assert manifest["languages"]["de"]["alphabet"] == vocab.alphabets["de"]
    assert 0.5 < manifest["languages"]["de"]["mask"]["density"] < 0.7
    assert manifest["provenance"]["trainer"] == "test"
    for lang in LANGS:
        for n in masks.shapes:
            assert torch.equal(bundle.masks.get(lang, n), masks.get(lang, n))
    waves = torch.randn(3, 6000)
    ids = torch.tensor([2, 0, 1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            bundle.model(waves, lang_ids=ids).logits, model(waves, lang_ids=ids).logits
        )


def test_rewrite_replaces_and_bf16_round_trip(tmp_path: Path) -> None:
    _write(tmp_path)
    path = _write(tmp_path, dtype=torch.bfloat16)
    bundle = read_bundle(path)
    assert bundle.model.ctc_head.weight.dtype == torch.bfloat16
    assert read_bundle(path, dtype=torch.float32).model.ctc_head.weight.dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["bundle"]


def test_failed_write_keeps_the_old_bundle_and_leaves_no_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path)
    before = (path / "manifest.json").read_bytes()

    def fail_on_masks(tensors: object, filename: str, **kw: object) -> None:
        if filename.endswith("masks.safetensors"):
            raise OSError("disk full")
        save_file(tensors, filename, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("model.bundle.save_file", fail_on_masks)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path)
    assert (path / "manifest.json").read_bytes() == before
    assert read_bundle(path).model.languages == LANGS
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["bundle"]


def test_refuses_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "masks.safetensors").unlink()
    with pytest.raises(BundleError, match=r"masks\.safetensors: missing file"):
        read_bundle(path)
    with pytest.raises(BundleError, match=r"manifest\.json: missing file"):
        read_bundle(tmp_path)


def test_refuses_missing_language_model_file(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "lm" / "en.arpa").unlink()
    with pytest.raises(BundleError, match=r"en\.arpa: missing file"):
        read_bundle(path)


def test_refuses_checksum_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data = bytearray((path / "backbone.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"backbone\.safetensors: checksum mismatch"):
        read_bundle(path)


def test_refuses_unknown_version(tmp_path: Path) -> None:
    path = _write(tmp_path)
    _edit_manifest(path, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match=r"manifest\.json: unknown format version 99"):
        read_bundle(path)


def test_refuses_mask_shape_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path)
    packed = load_file(str(path / "masks.safetensors"))
    packed["de"] = packed["de"][:-4].clone()
    save_file(packed, str(path / "masks.safetensors"))
    _rehash(path, "masks.safetensors")
    with pytest.raises(BundleError, match=r"masks\.safetensors: mask shape mismatch.*'de'"):
        read_bundle(path)


def test_refuses_declared_mask_shapes_that_do_not_fit_the_model(tmp_path: Path) -> None:
    path = _write(tmp_path)

    def shrink(m: dict) -> None:
        name = next(iter(m["mask_shapes"]))
        m["mask_shapes"][name] = [1, 1]

    _edit_manifest(path, shrink)
    with pytest.raises(BundleError, match=r"masks\.safetensors: mask shape mismatch"):
        read_bundle(path)


def test_refuses_language_without_alphabet(tmp_path: Path) -> None:
    path = _write(tmp_path)

    def drop(m: dict) -> None:
        del m["vocab"]["alphabets"]["es"]
        m["languages"]["es"]["alphabet"] = []

    _edit_manifest(path, drop)
    with pytest.raises(BundleError, match=r"manifest\.json: language 'es' has no alphabet"):
        read_bundle(path)


def test_refuses_backbone_that_does_not_fit_config(tmp_path: Path) -> None:
    path = _write(tmp_path)
    state = load_file(str(path / "backbone.safetensors"))
    state.pop("ctc_head.bias")
    save_file(state, str(path / "backbone.safetensors"))
    _rehash(path, "backbone.safetensors")
    with pytest.raises(BundleError, match=r"backbone\.safetensors: .*ctc_head\.bias"):
        read_bundle(path)


def test_writer_refuses_language_without_masks_or_alphabet(tmp_path: Path) -> None:
    model, vocab, masks = _parts()
    masks.remove("es")
    with pytest.raises(ValueError, match="'es' has no masks"):
        write_bundle(tmp_path / "b", model, vocab, masks, provenance={})
    model, vocab, masks = _parts()
    del vocab.alphabets["es"]
    with pytest.raises(ValueError, match="'es' has no alphabet"):
        write_bundle(tmp_path / "b", model, vocab, masks, provenance={})
    assert not (tmp_path / "b").exists()


def test_encoder_lid_head_round_trips(tmp_path: Path) -> None:
    model, vocab, masks = _parts()
    model.replace_lid_head("encoder")
    path = write_bundle(tmp_path / "bundle", model, vocab, masks, provenance={}, metrics=None)
    bundle = read_bundle(path)
    assert bundle.manifest["model"]["lid_input"] == "encoder"
    assert bundle.model.lid_input == "encoder"
    waves = torch.randn(2, 6000)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            bundle.model.identify_language(waves, None), model.identify_language(waves, None)
        )


def test_a_manifest_without_lid_input_has_a_conv_features_head(tmp_path: Path) -> None:
    path = _write(tmp_path)  # bundles written before lid_input existed read the conv features
    assert read_bundle(path).manifest["model"]["lid_input"] == "features"
    _edit_manifest(path, lambda m: m["model"].pop("lid_input"))
    assert read_bundle(path).model.lid_input == "features"


def test_refuses_unknown_lid_input(tmp_path: Path) -> None:
    path = _write(tmp_path)
    _edit_manifest(path, lambda m: m["model"].update(lid_input="spectrogram"))
    with pytest.raises(BundleError, match="lid_input"):
        read_bundle(path)


def test_a_binary_lm_keeps_its_word_list_and_its_checksum(tmp_path: Path) -> None:
    """Beam search reads a binary LM's words from ``<lm>.unigrams.txt``: the bundle carries
    it beside the LM, checksummed like every file."""
    model, vocab, masks = _parts()
    lm = tmp_path / "de.bin"
    lm.write_bytes(b"not a real model: the writer copies bytes")
    sidecar_path(lm).write_text("grüße\nwelt\n", encoding="utf-8")
    path = write_bundle(
        tmp_path / "bundle", model, vocab, masks, provenance={}, lm_files={"de": lm}
    )
    bundle = read_bundle(path)
    assert bundle.lm_paths["de"] == path / "lm" / "de.bin"
    assert sidecar_unigrams(bundle.lm_paths["de"]) == ["grüße", "welt"]
    (path / "lm" / "de.bin.unigrams.txt").write_text("tampered\n", encoding="utf-8")
    with pytest.raises(BundleError, match="unigrams"):
        read_bundle(path)
