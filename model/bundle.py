"""The bundle: the directory contract between the trainer (writer) and the service (reader).

Layout::

    manifest.json         format version, backbone config, vocabulary, languages (alphabet,
                          mask statistics), mask shapes, sha256 of every file, provenance
    backbone.safetensors  every model parameter (dense), in the bundle's dtype
    masks.safetensors     one packed uint8 buffer per language (see model.masks)
    lm/<lang>.(arpa|bin)  optional n-gram language models (a binary one with its word
                          list, lm/<lang>.bin.unigrams.txt, copied by the writer)

The writer builds the directory under a temporary name beside the target and renames it
into place. The reader checks version, checksums and shapes before building anything, and
refuses with a :class:`BundleError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.atomic import atomic_directory, fsync_path
from model.beam_search import sidecar_path
from model.config import BackboneConfig, check_lid_input
from model.masks import LanguageMasks
from model.network import LassModel
from model.vocab import Vocabulary

BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKBONE = "backbone.safetensors"
MASKS = "masks.safetensors"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class BundleError(Exception):
    """A bundle the reader refuses; the message names the file and the problem."""

    def __init__(self, file: Path | str, problem: str):
        super().__init__(f"{file}: {problem}")
        self.file = str(file)
        self.problem = problem


@dataclass
class Bundle:
    """A verified, loaded bundle."""

    path: Path
    manifest: dict[str, Any]
    model: LassModel
    vocab: Vocabulary
    masks: LanguageMasks
    lm_paths: dict[str, Path]  # language -> lm/<lang>.(arpa|bin)


def copy_lm(src: Path, folder: Path, rel: str) -> list[str]:
    """Copy an n-gram LM to ``folder/rel`` and, for a binary one, its word list beside it
    (beam search needs it: binary files cannot list their words). Returns the relative
    paths written, for the manifest's checksums."""
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, folder / rel)
    written = [rel]
    side = sidecar_path(Path(src))
    if side.is_file():
        side_rel = sidecar_path(Path(rel)).as_posix()
        shutil.copyfile(side, folder / side_rel)
        written.append(side_rel)
    return written


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    for name, d in _DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"unsupported bundle dtype {dtype}; use one of {sorted(_DTYPES)}")


def write_bundle(
    out_dir: Path,
    model: LassModel,
    vocab: Vocabulary,
    masks: LanguageMasks,
    provenance: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    lm_files: Mapping[str, Path] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a bundle atomically (temporary directory beside ``out_dir``, then rename).

    Every model language needs masks and an alphabet; ValueError otherwise. An existing
    bundle at ``out_dir`` is replaced.
    """
    out_dir = Path(out_dir)
    languages = list(model.languages)
    for lang in languages:
        if lang not in masks:
            raise ValueError(f"language {lang!r} has no masks")
        if not vocab.alphabets.get(lang):
            raise ValueError(f"language {lang!r} has no alphabet in the vocabulary")
    extra = set(masks.languages) - set(languages)
    if extra:
        raise ValueError(f"masks for languages the model does not know: {sorted(extra)}")
    if len(vocab) != model.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} tokens, the model's head {model.vocab_size}")
    shapes = model.prunable_shapes()
    if dict(masks.shapes) != shapes:
        raise ValueError("mask shapes do not match the model's prunable tensors")
    for lang in lm_files or {}:
        if lang not in languages:
            raise ValueError(f"language model for unknown language {lang!r}")

    with atomic_directory(out_dir) as tmp:
        state = {
            k: (
                v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()
            ).contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(tmp / BACKBONE), metadata={"format": "pt"})
        packed = {k: v.detach().cpu().contiguous() for k, v in masks.state_dict().items()}
        save_file(packed, str(tmp / MASKS), metadata={"format": "pt"})
        lm_rel: dict[str, str] = {}
        files = [BACKBONE, MASKS]
        for lang, src in (lm_files or {}).items():
            src = Path(src)
            rel = f"lm/{lang}{''.join(src.suffixes) or '.bin'}"
            files += copy_lm(src, tmp, rel)
            lm_rel[lang] = rel
        for rel in files:
            fsync_path(tmp / rel)
        stats = masks.stats()
        manifest: dict[str, Any] = {
            "format": "lass-bundle",
            "format_version": BUNDLE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": model.config.to_dict(),
            "model": {
                "vocab_size": model.vocab_size,
                "languages": languages,  # lang_ids and LID logits index this list
                "scope": list(model.scope),
                "lid_head": model.lid_head is not None,
                "lid_input": model.lid_input,
                "dtype": _dtype_name(dtype),
            },
            "vocab": vocab.to_dict(),
            "languages": {
                lang: {
                    "alphabet": vocab.alphabets[lang],
                    "mask": {
                        "density": stats.density[lang],
                        "kept": stats.kept[lang],
                        "specific": stats.specific[lang],
                    },
                    "lm": lm_rel.get(lang),
                }
                for lang in languages
            },
            "mask_stats": stats.to_dict(),
            "mask_shapes": {name: list(shape) for name, shape in shapes.items()},
            "mask_bytes_per_language": masks.bytes_per_language(),
            "files": {rel: _sha256(tmp / rel) for rel in files},
            "provenance": dict(provenance),
            "metrics": dict(metrics or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        fsync_path(tmp / MANIFEST)
    return out_dir


def _load_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not path.is_dir():
        raise BundleError(path, "missing bundle directory")
    if not file.is_file():
        raise BundleError(file, "missing file")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(file, f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(file, "not a JSON object")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            file, f"unknown format version {version!r} (this lass reads {BUNDLE_FORMAT_VERSION})"
        )
    for key in ("backbone", "model", "vocab", "languages", "mask_shapes", "files"):
        if key not in manifest:
            raise BundleError(file, f"missing key {key!r}")
    return manifest


def _verify_files(path: Path, manifest: dict[str, Any]) -> None:
    files: dict[str, str] = manifest["files"]
    for required in (BACKBONE, MASKS):
        if required not in files:
            raise BundleError(path / MANIFEST, f"does not list {required}")
    for rel, digest in files.items():
        file = path / rel
        if not file.is_file():
            raise BundleError(file, "missing file")
        actual = _sha256(file)
        if actual != digest:
            raise BundleError(file, f"checksum mismatch (sha256 {actual}, manifest says {digest})")


def read_bundle(
    path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Bundle:
    """Verify and load a bundle; the model comes back in eval mode with its masks set.

    ``dtype`` None keeps the bundle's stored dtype.
    """
    path = Path(path)
    manifest = _load_manifest(path)
    _verify_files(path, manifest)
    mfile = path / MANIFEST
    try:
        config = BackboneConfig.from_dict(manifest["backbone"])
        vocab = Vocabulary.from_dict(manifest["vocab"])
        info = manifest["model"]
        languages = list(info["languages"])
        stored_dtype = _DTYPES[info.get("dtype", "float32")]
        # bundles from before lid_input existed have the conv-features head
        lid_input = check_lid_input(info.get("lid_input", "features"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(mfile, f"invalid configuration ({exc})") from exc
    for lang in languages:
        if not vocab.alphabets.get(lang) or not manifest["languages"].get(lang, {}).get("alphabet"):
            raise BundleError(mfile, f"language {lang!r} has no alphabet")
    if len(vocab) != info["vocab_size"]:
        raise BundleError(
            mfile, f"vocabulary has {len(vocab)} tokens, vocab_size says {info['vocab_size']}"
        )

    model = LassModel(
        config,
        vocab_size=info["vocab_size"],
        languages=languages,
        scope=info.get("scope", ["attention", "feed_forward"]),
        lid_head=bool(info.get("lid_head", True)),
        lid_input=lid_input,
    )
    try:
        state = load_file(str(path / BACKBONE))
    except SafetensorError as exc:
        raise BundleError(path / BACKBONE, f"unreadable safetensors ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BundleError(
            path / BACKBONE,
            f"tensors do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}",
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise BundleError(
                path / BACKBONE,
                f"shape mismatch for {name}: {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)}",
            )
    model.load_state_dict(state)

    shapes = model.prunable_shapes()
    declared = {k: torch.Size(v) for k, v in manifest["mask_shapes"].items()}
    if declared != shapes:
        bad = sorted(set(declared.items()) ^ set(shapes.items()))[:2]
        raise BundleError(
            path / MASKS, f"mask shape mismatch with the model's prunable tensors: {bad}"
        )
    try:
        packed = load_file(str(path / MASKS))
    except SafetensorError as exc:
        raise BundleError(path / MASKS, f"unreadable safetensors ({exc})") from exc
    missing_masks = [lang for lang in languages if lang not in packed]
    if missing_masks:
        raise BundleError(path / MASKS, f"no masks for languages {missing_masks}")
    try:
        masks = LanguageMasks.from_state_dict(packed, shapes, languages, device=device)
    except ValueError as exc:
        raise BundleError(path / MASKS, f"mask shape mismatch: {exc}") from exc

    model.to(device=torch.device(device), dtype=dtype or stored_dtype)
    model.set_masks(masks)
    model.eval()
    lm_paths = {
        lang: path / entry["lm"] for lang, entry in manifest["languages"].items() if entry.get("lm")
    }
    return Bundle(
        path=path, manifest=manifest, model=model, vocab=vocab, masks=masks, lm_paths=lm_paths
    )
