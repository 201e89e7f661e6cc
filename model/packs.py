"""Language packs: one more language over a bundle's frozen shared weights.

A pack is a directory (and, to upload it, a tar archive of that directory)::

    manifest.json      format and version, the language, its alphabet, the characters it
                       adds to the CTC head (``new_tokens``, in row order), mask statistics,
                       LID (not included, see below), the backbone it is bound to, sha256 of
                       every other file, provenance and metrics
    pack.safetensors   ``mask``: the language's keep-mask, packed like one language of
                       ``masks.safetensors`` (uint8 [bytes_per_language]);
                       ``ctc_rows.weight`` [k, D] and ``ctc_rows.bias`` [k]: the CTC output
                       rows of the k characters the bundle lacks (k may be 0)
    lm/<lang>.(arpa|bin)  optional word n-gram LM (a binary one with its word list,
                          ``lm/<lang>.bin.unigrams.txt``)

**Binding.** A pack is only valid over the exact weights it was trained on: the manifest's
``backbone.sha256`` is the sha256 of the bundle's ``backbone.safetensors`` (every dense
weight, the CTC head's existing rows included, which the pack's characters shared with the
bundle decode through), and ``backbone.tokens_sha256`` that of the bundle's token list
(the columns those rows are). A server with other weights refuses the pack
(:class:`PackMismatchError`, 409), naming the weights it needs.

**What adding changes.** Nothing the bundle's languages compute: the shared weights are
not touched, the new language is one more packed mask buffer, and its rows are appended
after every existing column by :class:`ExtendedHead`, which computes the bundle's rows
exactly as the plain head did and the added rows in a separate product.

**LID.** A new output of the LID head would change the softmax over the bundle's
languages, and so their probabilities and sometimes the chosen language: packs carry no
LID output (``lid.included`` false) and requests in an added language must name it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from model.atomic import atomic_directory, fsync_path
from model.bundle import BACKBONE, copy_lm
from model.network import LassModel
from model.vocab import ColumnVocabulary

PACK_FORMAT = "lass-language-pack"
PACK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "pack.safetensors"
MASK_KEY = "mask"
ROWS_WEIGHT = "ctc_rows.weight"
ROWS_BIAS = "ctc_rows.bias"
# Language codes become folder and file names: letters, digits, '-' and '_' only.
LANGUAGE_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
LID_NOT_INCLUDED = (
    "an LID output for a new language would change the LID softmax, and so the "
    "probabilities and sometimes the choice, for the bundle's languages; requests in this "
    "language must name it"
)


class PackError(Exception):
    """A malformed pack (HTTP 422); the message names the file and the problem."""

    def __init__(self, file: Path | str, problem: str):
        super().__init__(f"{file}: {problem}")
        self.file = str(file)
        self.problem = problem


class PackMismatchError(Exception):
    """A well-formed pack trained on other backbone weights than the served ones (HTTP 409)."""

    def __init__(self, language: str, needed: str, served: str, what: str = "backbone weights"):
        super().__init__(
            f"the pack for {language!r} was trained on {what} with sha256 {needed}; this server "
            f"serves {served}. Serve the bundle whose {BACKBONE} has sha256 {needed}, or train "
            "the pack on this one (lass train add-language --bundle <served bundle>)"
        )
        self.needed = needed
        self.served = served


@dataclass
class LanguagePack:
    """A verified pack, loaded on the CPU."""

    path: Path
    manifest: dict[str, Any]
    language: str
    alphabet: list[str]
    new_tokens: list[str]  # characters the bundle lacks, in the order of the rows
    mask: Tensor  # uint8 [bytes_per_language]
    rows_weight: Tensor  # [k, D]
    rows_bias: Tensor  # [k]
    lm_path: Path | None

    @property
    def backbone_sha256(self) -> str:
        return str(self.manifest["backbone"]["sha256"])

    def device_bytes(self) -> int:
        """Bytes the pack adds on the model's device: the packed mask and the CTC rows (in
        fp32; in the served dtype they are cast to that)."""
        rows = self.rows_weight.numel() + self.rows_bias.numel()
        return self.mask.numel() + rows * self.rows_weight.element_size()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tokens_sha256(tokens: Sequence[str]) -> str:
    """sha256 of a token list (its JSON, UTF-8): which columns the bundle's rows are."""
    return hashlib.sha256(json.dumps(list(tokens), ensure_ascii=False).encode()).hexdigest()


def backbone_binding(bundle_manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a pack trained on this bundle is bound to (the manifest's ``backbone`` entry)."""
    return {
        "sha256": bundle_manifest["files"][BACKBONE],
        "tokens_sha256": tokens_sha256(bundle_manifest["vocab"]["tokens"]),
        "config": dict(bundle_manifest["backbone"]),
        "scope": list(bundle_manifest["model"].get("scope", [])),
        "mask_bytes_per_language": bundle_manifest.get("mask_bytes_per_language"),
        "bundle": bundle_manifest.get("provenance", {}).get("name"),
    }


def write_pack(
    out_dir: Path,
    *,
    language: str,
    alphabet: Sequence[str],
    new_tokens: Sequence[str],
    mask: Tensor,
    rows_weight: Tensor,
    rows_bias: Tensor,
    binding: Mapping[str, Any],
    mask_stats: Mapping[str, Any],
    lm_file: Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a pack atomically (temporary directory beside ``out_dir``, then rename; an
    existing pack there is replaced). ``mask`` is the packed keep-mask (uint8 [bytes]),
    ``rows_weight [k, D]``/``rows_bias [k]`` the rows of ``new_tokens``."""
    out_dir = Path(out_dir)
    if not LANGUAGE_CODE.match(language):
        raise ValueError(f"language code {language!r}: letters, digits, '-' and '_' only")
    if rows_weight.dim() != 2 or rows_weight.shape[0] != len(new_tokens):
        raise ValueError(f"rows_weight {tuple(rows_weight.shape)} for {len(new_tokens)} tokens")
    if rows_bias.shape != (len(new_tokens),):
        raise ValueError(f"rows_bias {tuple(rows_bias.shape)} for {len(new_tokens)} tokens")
    if mask.dtype != torch.uint8 or mask.dim() != 1:
        raise ValueError("mask must be the packed uint8 buffer of one language")
    with atomic_directory(out_dir) as tmp:
        tensors = {
            MASK_KEY: mask.detach().cpu().contiguous(),
            ROWS_WEIGHT: rows_weight.detach().to("cpu", torch.float32).contiguous(),
            ROWS_BIAS: rows_bias.detach().to("cpu", torch.float32).contiguous(),
        }
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "pt"})
        files = [TENSORS]
        lm_rel = None
        if lm_file is not None:
            suffix = ".bin" if Path(lm_file).suffix == ".bin" else ".arpa"
            lm_rel = f"lm/{language}{suffix}"
            files += copy_lm(Path(lm_file), tmp, lm_rel)
        for rel in files:
            fsync_path(tmp / rel)
        manifest = {
            "format": PACK_FORMAT,
            "format_version": PACK_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "language": language,
            "alphabet": list(alphabet),
            "new_tokens": list(new_tokens),
            "mask": dict(mask_stats),
            "mask_bytes": int(mask.numel()),
            "rows": {"count": len(new_tokens), "dim": int(rows_weight.shape[1])},
            "lid": {"included": False, "reason": LID_NOT_INCLUDED},
            "lm": lm_rel,
            "backbone": dict(binding),
            "files": {rel: _sha256_file(tmp / rel) for rel in files},
            "provenance": dict(provenance or {}),
            "metrics": dict(metrics or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        fsync_path(tmp / MANIFEST)
    return out_dir


def _require(cond: bool, file: Path, problem: str) -> None:
    if not cond:
        raise PackError(file, problem)


def read_pack(path: Path) -> LanguagePack:
    """Verify and load a pack directory; :class:`PackError` names the first problem.

    Checks, in order: manifest present, JSON, format and version known; language code, alphabet
    and new tokens well formed; every listed file present (names inside the pack only) and
    matching its sha256; the tensors present with consistent shapes and dtypes. Whether it
    fits a served model is :func:`check_pack`'s question.
    """
    path = Path(path)
    mfile = path / MANIFEST
    _require(path.is_dir(), path, "missing pack directory")
    _require(mfile.is_file(), mfile, "missing file")
    try:
        manifest = json.loads(mfile.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackError(mfile, f"not valid JSON ({exc})") from exc
    _require(isinstance(manifest, dict), mfile, "not a JSON object")
    _require(manifest.get("format") == PACK_FORMAT, mfile, f"format is not {PACK_FORMAT!r}")
    version = manifest.get("format_version")
    _require(
        version == PACK_FORMAT_VERSION,
        mfile,
        f"unknown format version {version!r} (this lass reads {PACK_FORMAT_VERSION})",
    )
    for key in ("language", "alphabet", "new_tokens", "backbone", "files", "mask_bytes"):
        _require(key in manifest, mfile, f"missing key {key!r}")
    language = manifest["language"]
    _require(
        isinstance(language, str) and bool(LANGUAGE_CODE.match(language)),
        mfile,
        f"language code {language!r}: letters, digits, '-' and '_' only",
    )
    alphabet, new_tokens = manifest["alphabet"], manifest["new_tokens"]
    for name, chars in (("alphabet", alphabet), ("new_tokens", new_tokens)):
        _require(
            isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1 for c in chars),
            mfile,
            f"{name} must be a list of single characters",
        )
        _require(len(set(chars)) == len(chars), mfile, f"{name} repeats a character")
    _require(" " in alphabet, mfile, "alphabet lacks the word separator ' '")
    _require(set(new_tokens) <= set(alphabet), mfile, "new_tokens outside the alphabet")
    backbone = manifest["backbone"]
    _require(
        isinstance(backbone, dict)
        and isinstance(backbone.get("sha256"), str)
        and isinstance(backbone.get("tokens_sha256"), str),
        mfile,
        "backbone must name the sha256 of the weights and of the tokens it was trained on",
    )
    files = manifest["files"]
    _require(isinstance(files, dict) and TENSORS in files, mfile, f"does not list {TENSORS}")
    lm_rel = manifest.get("lm")
    _require(lm_rel is None or lm_rel in files, mfile, f"lm {lm_rel!r} is not a listed file")
    for rel, digest in files.items():
        parts = PurePosixPath(rel).parts
        _require(
            isinstance(rel, str) and bool(parts) and not rel.startswith("/") and ".." not in parts,
            mfile,
            f"file name {rel!r} leaves the pack",
        )
        file = path / rel
        _require(file.is_file() and not file.is_symlink(), file, "missing file")
        actual = _sha256_file(file)
        _require(
            actual == digest, file, f"checksum mismatch (sha256 {actual}, manifest says {digest})"
        )
    tfile = path / TENSORS
    try:
        tensors = load_file(str(tfile))
    except SafetensorError as exc:
        raise PackError(tfile, f"unreadable safetensors ({exc})") from exc
    _require(
        set(tensors) == {MASK_KEY, ROWS_WEIGHT, ROWS_BIAS},
        tfile,
        f"expected tensors {[MASK_KEY, ROWS_WEIGHT, ROWS_BIAS]}, got {sorted(tensors)}",
    )
    mask, weight, bias = tensors[MASK_KEY], tensors[ROWS_WEIGHT], tensors[ROWS_BIAS]
    _require(
        mask.dtype == torch.uint8 and mask.dim() == 1 and mask.numel() == manifest["mask_bytes"],
        tfile,
        f"mask is {mask.dtype} {tuple(mask.shape)}, manifest says {manifest['mask_bytes']} bytes",
    )
    k = len(new_tokens)
    _require(
        weight.dim() == 2 and weight.shape[0] == k and weight.is_floating_point(),
        tfile,
        f"{ROWS_WEIGHT} is {tuple(weight.shape)}, expected [{k}, D] for {k} new tokens",
    )
    _require(bias.shape == (k,) and bias.is_floating_point(), tfile, f"{ROWS_BIAS} is not [{k}]")
    _require(
        bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all()),
        tfile,
        "CTC rows hold NaN or infinite values",
    )
    return LanguagePack(
        path=path,
        manifest=manifest,
        language=language,
        alphabet=list(alphabet),
        new_tokens=list(new_tokens),
        mask=mask,
        rows_weight=weight,
        rows_bias=bias,
        lm_path=path / lm_rel if lm_rel else None,
    )


def check_pack(pack: LanguagePack, bundle_manifest: Mapping[str, Any], model: LassModel) -> None:
    """Whether ``pack`` fits the served bundle: :class:`PackMismatchError` when it was trained on
    other weights or tokens, :class:`PackError` when its shapes do not fit the model."""
    served = bundle_manifest["files"][BACKBONE]
    if pack.backbone_sha256 != served:
        raise PackMismatchError(pack.language, pack.backbone_sha256, served)
    needed_tokens = pack.manifest["backbone"]["tokens_sha256"]
    served_tokens = tokens_sha256(bundle_manifest["vocab"]["tokens"])
    if needed_tokens != served_tokens:
        raise PackMismatchError(pack.language, needed_tokens, served_tokens, "a token list")
    mfile = pack.path / MANIFEST
    masks = model.masks
    _require(masks is not None, mfile, "the served model has no language masks")
    assert masks is not None
    _require(
        pack.mask.numel() == masks.bytes_per_language(),
        pack.path / TENSORS,
        f"mask has {pack.mask.numel()} bytes, the served model's prunable weights take "
        f"{masks.bytes_per_language()}",
    )
    dim = model.config.encoder_embed_dim
    _require(
        pack.rows_weight.shape[1] == dim,
        pack.path / TENSORS,
        f"CTC rows are {pack.rows_weight.shape[1]} wide, the served model's hidden size is {dim}",
    )


# ------------------------------------------------------------------------------ archive
def archive_pack(folder: Path, out: Path) -> Path:
    """A tar archive of a pack folder (its files at the archive's top level), for upload."""
    folder = Path(folder)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(file, arcname=file.relative_to(folder).as_posix(), recursive=False)
    return out


def extract_archive(source: IO[bytes], dest: Path, max_bytes: int, max_members: int = 64) -> Path:
    """Unpack an uploaded pack (tar, optionally gzip/bz2/xz-compressed) into ``dest`` and
    return the folder holding its ``manifest.json`` (the top level, or a single folder).

    Refused with :class:`PackError`: anything but a tar, absolute names or names with
    ``..``, links, devices and other non-regular members, more than ``max_members``
    members, or more than ``max_bytes`` unpacked (counted while reading, so a compressed
    archive cannot unpack past the bound). Nothing is written outside ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    where = "upload"
    try:
        tar = tarfile.open(fileobj=source, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PackError(where, f"not a tar archive ({exc})") from exc
    total = 0
    with tar:
        for count, member in enumerate(tar, start=1):
            if count > max_members:
                raise PackError(where, f"more than {max_members} members")
            name = member.name
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or "\\" in name or not parts:
                raise PackError(where, f"member {name!r} would unpack outside the pack")
            parts = tuple(p for p in parts if p != ".")
            if member.isdir():
                if parts:
                    dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isreg():
                raise PackError(where, f"member {name!r} is not a regular file")
            if not parts:
                raise PackError(where, f"member {name!r} has no name")
            total += member.size
            if total > max_bytes:
                raise PackError(where, f"unpacks to more than {max_bytes} bytes")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member)
            if data is None:
                raise PackError(where, f"member {name!r} cannot be read")
            written = 0
            with target.open("xb") as f:
                while block := data.read(1 << 20):
                    written += len(block)
                    if written > member.size:  # a header that lies about the size
                        raise PackError(where, f"member {name!r} is longer than its header says")
                    f.write(block)
    if (dest / MANIFEST).is_file():
        return dest
    inner = [p for p in dest.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    if len(inner) == 1:
        return inner[0]
    raise PackError(where, f"no {MANIFEST} at the top level or in a single folder")


def read_archive_bytes(data: bytes, dest: Path, max_bytes: int) -> LanguagePack:
    """:func:`extract_archive` of ``data`` then :func:`read_pack`."""
    return read_pack(extract_archive(io.BytesIO(data), dest, max_bytes))


# -------------------------------------------------------------------- serving a pack
class ExtendedHead(nn.Module):
    """The bundle's CTC head plus appended rows for characters added languages brought.

    ``x [..., D] -> [..., V_base + K]``: the bundle's columns come from the untouched base
    ``nn.Linear`` (the very computation the plain head did, so they are bit-identical), the
    K added ones from a second product, concatenated after them.
    """

    extra_weight: Tensor  # [K, D]
    extra_bias: Tensor  # [K]

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        w = base.weight
        # Buffers, not parameters: nothing trains them in the server, and they follow
        # model.to(device, dtype) with the rest.
        self.register_buffer("extra_weight", w.new_zeros(0, base.in_features), persistent=False)
        self.register_buffer("extra_bias", w.new_zeros(0), persistent=False)

    @property
    def weight(self) -> Tensor:
        """The base head's weight (what code that reads ``ctc_head.weight`` expects)."""
        return self.base.weight

    @property
    def out_features(self) -> int:
        return self.base.out_features + int(self.extra_weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.extra_weight.shape[0] == 0:
            return y
        return torch.cat([y, F.linear(x, self.extra_weight, self.extra_bias)], dim=-1)

    def append(self, weight: Tensor, bias: Tensor) -> None:
        """Add rows ``weight [k, D]``, ``bias [k]`` after the current columns."""
        like = self.base.weight
        self.extra_weight = torch.cat([self.extra_weight, weight.to(like.device, like.dtype)])
        self.extra_bias = torch.cat([self.extra_bias, bias.to(like.device, like.dtype)])

    def truncate(self, width: int) -> None:
        """Keep the first ``width`` columns (never fewer than the base head's)."""
        keep = max(0, width - self.base.out_features)
        self.extra_weight = self.extra_weight[:keep].clone()
        self.extra_bias = self.extra_bias[:keep].clone()


def install_pack(model: LassModel, vocab: ColumnVocabulary, pack: LanguagePack) -> ColumnVocabulary:
    """Serve ``pack``'s language with ``model``: its mask buffer, its rows after the current
    columns, its lang id after the others. Returns the new vocabulary. Nothing else changes;
    on an error nothing has changed. Call it between forwards (the model thread)."""
    masks = model.masks
    if masks is None:
        raise ValueError("the model has no language masks")
    if pack.language in model.languages or pack.language in masks:
        raise ValueError(f"language {pack.language!r} is already served")
    current: nn.Module = model.ctc_head
    width = current.out_features if isinstance(current, ExtendedHead | nn.Linear) else -1
    if width != len(vocab):
        raise ValueError(f"the CTC head has {width} columns, the vocabulary {len(vocab)}")
    new_vocab = vocab.with_language(pack.language, pack.alphabet, pack.new_tokens)
    masks.add_packed(pack.language, pack.mask.to(masks.device))
    if isinstance(current, ExtendedHead):
        head = current
    else:
        assert isinstance(current, nn.Linear)
        head = ExtendedHead(current)
        model.ctc_head = head  # type: ignore[assignment]
    head.append(pack.rows_weight, pack.rows_bias)
    model.languages.append(pack.language)
    model.vocab_size = len(new_vocab)
    return new_vocab


def uninstall_language(
    model: LassModel, vocab: ColumnVocabulary, language: str
) -> ColumnVocabulary:
    """Stop serving ``language`` (a bundle language or an added one): drop its mask buffer,
    its lang id, and its rows when they are the last columns. Returns the new vocabulary."""
    masks = model.masks
    if masks is None or language not in masks or language not in model.languages:
        raise KeyError(f"language {language!r} is not served")
    new_vocab = vocab.without_language(language)
    masks.remove(language)
    model.languages.remove(language)
    if isinstance(model.ctc_head, ExtendedHead):
        model.ctc_head.truncate(len(new_vocab))
    model.vocab_size = len(new_vocab)
    cache = model.weight_cache
    if cache is not None:
        # Its materialized weights would never be asked for again but would hold budget
        # until evicted: drop them all (the others rebuild on first use, same values).
        cache.clear()
    return new_vocab
