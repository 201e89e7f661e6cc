"""Language packs (model/packs.py): the format, its checks, the archive, and serving one
over a bundle without changing what the bundle's languages compute."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from model.beam_search import sidecar_path, sidecar_unigrams
from model.bundle import BACKBONE, read_bundle
from model.masks import LanguageMasks
from model.network import LassModel
from model.packs import (
    ExtendedHead,
    LanguagePack,
    PackError,
    PackMismatchError,
    archive_pack,
    backbone_binding,
    check_pack,
    extract_archive,
    install_pack,
    read_pack,
    uninstall_language,
    write_pack,
)
from model.vocab import ColumnVocabulary, Vocabulary
from tests.service.conftest import make_bundle

TEXTS = {"en": ["the quick brown fox jumps over the lazy dog"], "de": ["die äpfel sind schön"]}
SV_ALPHABET = sorted(set("hej på dig min vän"))  # 'å' is in neither en nor de


def random_pack(
    bundle: Path,
    out: Path,
    language: str = "sv",
    alphabet: list[str] | None = None,
    seed: int = 3,
    density: float = 0.6,
    lm_file: Path | None = None,
) -> Path:
    """A pack over ``bundle`` with a random mask and random rows for the characters the
    bundle lacks (what the trainer writes, without training)."""
    alphabet = alphabet or SV_ALPHABET
    loaded = read_bundle(bundle)
    shapes = loaded.model.prunable_shapes()
    gen = torch.Generator().manual_seed(seed)
    masks = LanguageMasks(shapes)
    masks.add(language, {n: torch.rand(s, generator=gen) < density for n, s in shapes.items()})
    new_tokens = [c for c in alphabet if c not in loaded.vocab.tokens]
    dim = loaded.model.config.encoder_embed_dim
    return write_pack(
        out,
        language=language,
        alphabet=alphabet,
        new_tokens=new_tokens,
        mask=masks.packed(language),
        rows_weight=0.05 * torch.randn(len(new_tokens), dim, generator=gen),
        rows_bias=torch.zeros(len(new_tokens)),
        binding=backbone_binding(loaded.manifest),
        mask_stats={"density": masks.stats().density[language]},
        lm_file=lm_file,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "b", ["de", "en"], TEXTS)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(3, 12_000, generator=gen)
    return waves, torch.tensor([12_000, 9_000, 7_000])


def test_serving_a_pack_leaves_the_bundle_languages_bit_identical(
    bundle: Path, tmp_path: Path
) -> None:
    loaded = read_bundle(bundle)
    model = loaded.model
    waves, lengths = _batch()
    ids = [model.languages.index(x) for x in ("en", "de", "en")]
    with torch.inference_mode():
        before = model(waves, lengths, torch.tensor(ids)).logits

    folder = random_pack(bundle, tmp_path / "sv")
    tar = archive_pack(folder, tmp_path / "sv.tar")
    with tar.open("rb") as f:
        pack = read_pack(extract_archive(f, tmp_path / "unpacked", 10_000_000))
    check_pack(pack, loaded.manifest, model)
    assert pack.new_tokens == ["å"]
    vocab = ColumnVocabulary.from_vocabulary(loaded.vocab)
    served = install_pack(model, vocab, pack)
    base = len(loaded.vocab)
    assert isinstance(model.ctc_head, ExtendedHead) and model.ctc_head.out_features == base + 1
    assert served.language_token_ids("sv")[-1] == base and served.tokens[base] == "å"
    assert served.width("en") == vocab.width("en")  # a bundle language's columns never move

    with torch.inference_mode():
        after = model(waves, lengths, torch.tensor(ids)).logits
        sv_id = model.languages.index("sv")
        sv = model(waves[:1], lengths[:1], torch.tensor([sv_id])).logits
    assert after.shape[-1] == base + 1
    assert torch.equal(after[..., :base], before)  # bit for bit

    # The new language is exactly its mask over the frozen weights plus its rows.
    reference = read_bundle(bundle).model
    only = LanguageMasks(reference.prunable_shapes())
    only.add_packed("sv", pack.mask)
    reference.set_masks(only)
    reference.languages.append("sv")
    with torch.inference_mode():
        out = reference(waves[:1], lengths[:1], torch.tensor([sv_id]))
        rows = out.hidden @ pack.rows_weight.T + pack.rows_bias
    torch.testing.assert_close(sv, torch.cat([out.logits, rows], dim=-1), rtol=0, atol=1e-5)

    back = uninstall_language(model, served, "sv")
    assert len(back) == base and model.ctc_head.out_features == base and "sv" not in model.languages
    with torch.inference_mode():
        again = model(waves, lengths, torch.tensor(ids)).logits
    assert torch.equal(again, before)


def test_column_vocabulary_gives_each_added_language_its_own_columns() -> None:
    vocab = ColumnVocabulary.from_vocabulary(Vocabulary.build(TEXTS))
    base = len(vocab)
    one = vocab.with_language("sv", SV_ALPHABET, ["å"])
    two = one.with_language("fi", sorted(set("hyvää yötä på")), ["å"])
    assert two.language_token_ids("sv")[-1] == base
    assert two.language_token_ids("fi")[-1] == base + 1  # same character, its own row
    assert two.tokens[base] == two.tokens[base + 1] == "å"
    middle = two.without_language("sv")  # fi's column must not move
    assert len(middle) == base + 2 and middle.width("fi") == base + 2
    assert len(middle.without_language("fi")) == base  # trailing unused columns go
    with pytest.raises(ValueError, match="neither a bundle token"):
        vocab.with_language("xx", [" ", "ж"], [])
    with pytest.raises(ValueError, match="lacks"):
        vocab.with_language("xx", [" ", "a"], ["a"])  # 'a' is a bundle token


def _manifest(folder: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((folder / "manifest.json").read_text())


def test_read_pack_refuses_tampered_and_malformed_packs(bundle: Path, tmp_path: Path) -> None:
    folder = random_pack(bundle, tmp_path / "sv")
    tensors = folder / "pack.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(PackError, match="checksum mismatch"):
        read_pack(folder)

    folder = random_pack(bundle, tmp_path / "sv2")
    manifest = _manifest(folder)
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="leaves the pack"):
        read_pack(folder)

    folder = random_pack(bundle, tmp_path / "sv3")
    manifest = _manifest(folder)
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="unknown format version 99"):
        read_pack(folder)


def test_a_pack_of_other_weights_is_refused_naming_the_weights_it_needs(
    bundle: Path, tmp_path: Path
) -> None:
    other = make_bundle(tmp_path / "other", ["de", "en"], TEXTS, seed=7)
    pack = read_pack(random_pack(other, tmp_path / "sv"))
    served = read_bundle(bundle)
    with pytest.raises(PackMismatchError) as info:
        check_pack(pack, served.manifest, served.model)
    needed = read_bundle(other).manifest["files"][BACKBONE]
    assert needed in str(info.value) and served.manifest["files"][BACKBONE] in str(info.value)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "a\\..\\evil"])
def test_archives_cannot_write_outside_the_pack(tmp_path: Path, name: str) -> None:
    with pytest.raises(PackError, match="outside"):
        extract_archive(_tar([_file(name, b"x")]), tmp_path / "dest", 1000)
    assert not (tmp_path / "evil").exists()


def test_archives_with_links_too_much_data_or_no_tar_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("manifest.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(PackError, match="not a regular file"):
        extract_archive(_tar([(link, None)]), tmp_path / "a", 1000)
    with pytest.raises(PackError, match="more than 100 bytes"):
        extract_archive(_tar([_file("big", b"x" * 101)]), tmp_path / "b", 100)
    # compressed: the bound is on what it unpacks to, not on the upload
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info, data = _file("zeros", bytes(1_000_000))
        tar.addfile(info, io.BytesIO(data))
    assert len(buf.getvalue()) < 10_000
    buf.seek(0)
    with pytest.raises(PackError, match="more than"):
        extract_archive(buf, tmp_path / "c", 100_000)
    with pytest.raises(PackError, match="not a tar"):
        extract_archive(io.BytesIO(b"PK\x03\x04 not a tar at all" * 40), tmp_path / "d", 1000)
    with pytest.raises(PackError, match="no manifest.json"):
        extract_archive(_tar([_file("x/y", b"1")]), tmp_path / "e", 1000)


def test_pack_round_trip_keeps_everything(bundle: Path, tmp_path: Path) -> None:
    folder = random_pack(bundle, tmp_path / "sv")
    pack: LanguagePack = read_pack(folder)
    assert pack.language == "sv" and pack.alphabet == SV_ALPHABET
    assert pack.manifest["lid"]["included"] is False
    model: LassModel = read_bundle(bundle).model
    assert model.masks is not None
    assert pack.mask.numel() == model.masks.bytes_per_language()
    assert pack.device_bytes() == pack.mask.numel() + 4 * (model.config.encoder_embed_dim + 1)


def test_a_pack_with_a_binary_lm_carries_its_word_list(bundle: Path, tmp_path: Path) -> None:
    """Beam search reads a binary LM's words from ``<lm>.unigrams.txt``: without it every
    partial word scores as unknown."""
    lm = tmp_path / "sv.bin"
    lm.write_bytes(b"not a real model: the writer copies bytes")
    sidecar_path(lm).write_text("hej\nvärlden\n", encoding="utf-8")
    pack = read_pack(random_pack(bundle, tmp_path / "sv", lm_file=lm))
    assert pack.lm_path is not None and pack.lm_path.name == "sv.bin"
    assert sidecar_unigrams(pack.lm_path) == ["hej", "världen"]
    assert "lm/sv.bin.unigrams.txt" in pack.manifest["files"]
