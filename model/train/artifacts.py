"""Stage outputs: building a LassModel from the config, and the ``model.pt`` hand-off file.

Each stage reads the previous stage's ``model.pt`` and writes its own (atomically):
backbone config, vocabulary, languages, weights, masks (packed) when the stage has
them, auxiliary heads (the contrastive head, language adapters) and the list of
stages that produced it. The bundle (``model.bundle``) is written only by ``export``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.config import BackboneConfig, get_preset
from model.masks import LanguageMasks
from model.network import LassModel
from model.train import checkpoint as ckpt
from model.train.config import ModelConfig
from model.vocab import Vocabulary

ARTIFACT_FORMAT = 1


@dataclass
class Artifact:
    model: LassModel
    vocab: Vocabulary
    masks: LanguageMasks | None = None
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # name -> state dict
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per stage run


def backbone_config(cfg: ModelConfig) -> BackboneConfig:
    """The preset with ``overrides`` applied (any BackboneConfig field)."""
    base = get_preset(cfg.preset).to_dict()
    unknown = sorted(set(cfg.overrides) - set(base))
    if unknown:
        raise ValueError(f"model.overrides: unknown BackboneConfig field(s) {unknown}")
    return BackboneConfig.from_dict({**base, **cfg.overrides})


def new_model(cfg: ModelConfig, vocab: Vocabulary, init_from: Path | None = None) -> LassModel:
    """A LassModel over ``vocab``'s languages: random, or initialised from ``init_from``.

    ``init_from`` is a local Hugging Face wav2vec2 directory (real XLS-R weights) or a
    lass ``model.pt``; a CTC head of another vocabulary size is left freshly initialised.
    """
    build = functools.partial(
        LassModel,
        vocab_size=len(vocab),
        languages=vocab.languages,
        scope=cfg.scope,
        lid_head=cfg.lid_head,
        lid_input=cfg.lid_input,
    )
    if init_from is not None and init_from.is_dir():
        from model.checkpoint_hf import load_hf_wav2vec2

        backbone, state, _ = load_hf_wav2vec2(init_from)
        model = build(backbone)
        _load_compatible(model, state)
        return model
    if init_from is not None:
        art = load_artifact(init_from)
        model = build(art.model.config)
        _load_compatible(model, art.model.state_dict())
        return model
    with ckpt.seeded(cfg.seed):  # the same seed gives the same weights, in any process
        return build(backbone_config(cfg))


def _load_compatible(model: LassModel, state: dict[str, Tensor]) -> None:
    """Copy every tensor whose name and shape match (heads of another size stay random)."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)


def save_artifact(path: Path, art: Artifact) -> None:
    model = art.model
    masks = art.masks
    payload = {
        "format": ARTIFACT_FORMAT,
        "backbone": model.config.to_dict(),
        "vocab": art.vocab.to_dict(),
        "languages": list(model.languages),
        "scope": list(model.scope),
        "lid_head": model.lid_head is not None,
        "lid_input": model.lid_input,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": None
        if masks is None
        else {
            "languages": masks.languages,
            "shapes": {k: list(v) for k, v in masks.shapes.items()},
            "packed": {k: v.cpu() for k, v in masks.state_dict().items()},
        },
        "heads": art.heads,
        "history": art.history,
    }
    ckpt.atomic_save(payload, path)


def load_artifact(path: Path, device: str | torch.device = "cpu") -> Artifact:
    payload = ckpt.load(path)
    if payload.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{path}: not a lass stage output (format {payload.get('format')!r})")
    vocab = Vocabulary.from_dict(payload["vocab"])
    model = LassModel(
        BackboneConfig.from_dict(payload["backbone"]),
        len(vocab),
        payload["languages"],
        payload["scope"],
        payload["lid_head"],
        payload.get("lid_input", "features"),  # stage outputs from before lid_input existed
    )
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    masks = None
    if payload["masks"] is not None:
        m = payload["masks"]
        shapes = {k: torch.Size(v) for k, v in m["shapes"].items()}
        masks = LanguageMasks.from_state_dict(m["packed"], shapes, m["languages"], device)
    return Artifact(model, vocab, masks, payload["heads"], payload["history"])


def load_masks(path: Path) -> LanguageMasks:
    """Masks saved by ``prune`` (``masks.pt``)."""
    m = ckpt.load(path)
    shapes = {k: torch.Size(v) for k, v in m["shapes"].items()}
    return LanguageMasks.from_state_dict(m["packed"], shapes, m["languages"], "cpu")


def save_masks(path: Path, masks: LanguageMasks) -> None:
    ckpt.atomic_save(
        {
            "languages": masks.languages,
            "shapes": {k: list(v) for k, v in masks.shapes.items()},
            "packed": {k: v.cpu() for k, v in masks.state_dict().items()},
        },
        path,
    )


def stage_record(stage: str, cfg: Any, **extra: Any) -> dict[str, Any]:
    """One history entry: stage name, its config and whatever else it wants to note."""
    conf = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg  # type: ignore[arg-type]
    return {"stage": stage, "config": conf, **extra}
