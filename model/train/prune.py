"""``prune``: find each language's sub-network by magnitude pruning.

For one language, starting from the shared weights ``θ0`` (the pre-trained model):

    mask = all ones
    for round r = 1..R:                   # R = 1: one-shot
        train θ (masked by `mask`) for a few steps on this language only
        keep the largest |θ| so that density = (1 - target) ** (r / R)
        θ = θ0                            # rewind (lottery-ticket style)

so each round removes the same fraction of the remaining weights. The importance run's
objective is configurable (CTC on transcribed data, or the contrastive loss). Weights
are ranked per tensor (every layer keeps the same share) or globally over the scope.
The shared weights never change here: the result is masks, saved with statistics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.atomic import atomic_write_text
from model.masks import LanguageMasks
from model.network import LassModel
from model.train import checkpoint as ckpt
from model.train.artifacts import Artifact, load_masks, save_masks
from model.train.config import PruneConfig
from model.train.context import Context
from model.train.finetune import allowed_columns, ctc_step
from model.train.inputs import make_inputs
from model.train.loop import CHECKPOINT, train_stage_loop
from model.train.objectives import StepResult, contrastive_step
from model.train.pretrain import contrastive_head


def round_densities(target_sparsity: float, rounds: int) -> list[float]:
    """Density after each round: geometric, ending exactly at ``1 - target_sparsity``."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    final = 1.0 - target_sparsity
    return [final ** (r / rounds) for r in range(1, rounds + 1)]


def magnitude_masks(
    weights: Mapping[str, Tensor],
    current: Mapping[str, Tensor],
    density: float,
    granularity: str,
) -> dict[str, Tensor]:
    """Keep the ``density`` share of the largest ``|w|`` among weights ``current`` keeps.

    ``per_tensor``: each tensor keeps ``round(density * numel)``; ``global``: the count is
    taken over all tensors together. Already-pruned weights never come back.
    """
    scores = {
        n: torch.where(current[n], w.detach().abs().float(), -math.inf).reshape(-1)
        for n, w in weights.items()
    }
    out: dict[str, Tensor] = {}
    if granularity == "per_tensor":
        for name, s in scores.items():
            keep = torch.zeros_like(s, dtype=torch.bool)
            keep[torch.topk(s, round(density * s.numel())).indices] = True
            out[name] = keep.view(weights[name].shape)
        return out
    if granularity != "global":
        raise ValueError(f"unknown granularity {granularity!r}")
    flat = torch.cat(list(scores.values()))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, round(density * flat.numel())).indices] = True
    offset = 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view(weights[name].shape)
        offset += s.numel()
    return out


def _importance_run(
    ctx: Context,
    art: Artifact,
    language: str,
    mask: dict[str, Tensor],
    cfg: PruneConfig,
    out_dir: Path,
) -> None:
    """Train ``art.model`` in place through ``mask`` on ``language`` only."""
    model = art.model
    device = ctx.device
    single = LanguageMasks(model.prunable_shapes(), device)
    single.add(language, mask)
    model.set_masks(single)
    inputs = make_inputs(
        ctx,
        "train",
        cfg,
        mode="per_language",
        with_text=cfg.objective == "ctc",
        languages=[language],
    )
    modules: dict[str, torch.nn.Module] = {"model": model}
    # Only the prunable weights' magnitudes matter here: the conv feature encoder (never in
    # the scope, and half the cost of a step on the CPU) stays frozen.
    frozen = ("lid_head.", "feature_extractor.")
    if cfg.objective == "ctc":
        allowed = allowed_columns(art.vocab, model.languages).to(device)
        params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]

        def step_fn(batch: Any, step: int) -> StepResult:
            return ctc_step(model, batch, allowed)

    else:
        head = contrastive_head(art, cfg.contrastive, cfg.seed).to(device)
        modules["head"] = head
        unused = (*frozen, "ctc_head.")
        params = [p for n, p in model.named_parameters() if not n.startswith(unused)]
        params += list(head.parameters())

        def step_fn(batch: Any, step: int) -> StepResult:
            return contrastive_step(
                model, head, batch.waveforms, batch.lengths, batch.lang_ids, cfg.contrastive, step
            )

    model.feature_extractor.requires_grad_(False)
    train_stage_loop(
        ctx,
        inputs,
        name=f"prune {language} {out_dir.name}",
        out_dir=out_dir,
        cfg=cfg,
        modules=modules,
        params=params,
        step_fn=step_fn,
    )
    model.feature_extractor.requires_grad_(True)
    model.set_masks(None)


def prune_language(
    ctx: Context, art: Artifact, language: str, start: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The keep-masks of one language (resumable round by round)."""
    cfg = ctx.cfg.prune
    model: LassModel = art.model
    rounds = 1 if cfg.method == "one_shot" else max(1, cfg.rounds)
    shapes = model.prunable_shapes()
    mask = {n: torch.ones(s, dtype=torch.bool, device=ctx.device) for n, s in shapes.items()}
    for r, density in enumerate(round_densities(cfg.target(language), rounds), start=1):
        round_dir = ctx.stage_dir("prune") / language / f"round{r}"
        mask_file = round_dir / "mask.pt"
        if mask_file.exists():
            mask = {k: v.to(ctx.device) for k, v in ckpt.load(mask_file).items()}
            continue
        model.load_state_dict(start)  # rewind
        if cfg.steps > 0:
            _importance_run(ctx, art, language, mask, cfg, round_dir)
        params = dict(model.named_parameters())
        mask = magnitude_masks({n: params[n] for n in shapes}, mask, density, cfg.granularity)
        if ctx.dist.is_main:
            ckpt.atomic_save({k: v.cpu() for k, v in mask.items()}, mask_file)
            (round_dir / CHECKPOINT).unlink(missing_ok=True)  # large; the mask is what counts
    model.load_state_dict(start)
    return {k: v.cpu() for k, v in mask.items()}


def run_prune(ctx: Context) -> Path:
    """Run (or resume) per-language pruning; returns ``<work>/prune/masks.pt``."""
    out = ctx.stage_dir("prune") / "masks.pt"
    if out.exists():
        ctx.echo(f"prune: {out} exists, skipping")
        return out
    art = ctx.input_artifact("adapt")  # the newest model before adapt: the pre-trained one
    art.model.to(ctx.device)
    start = {k: v.detach().clone() for k, v in art.model.state_dict().items()}
    masks = LanguageMasks(art.model.prunable_shapes())
    for language in art.model.languages:
        masks.add(language, prune_language(ctx, art, language, start))
        ctx.echo(f"prune: {language} density {masks.stats().density[language]:.3f}")
    if ctx.dist.is_main:
        stats: dict[str, Any] = masks.stats().to_dict()
        stats["target_sparsity"] = {lang: ctx.cfg.prune.target(lang) for lang in masks.languages}
        atomic_write_text(out.with_name("mask_stats.json"), json.dumps(stats, indent=1))
        save_masks(out, masks)
    return out


__all__ = ["load_masks", "magnitude_masks", "round_densities", "run_prune"]
