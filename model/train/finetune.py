"""``finetune``: CTC fine-tuning of the sub-networks, then the language-identification head.

With the ``lass`` method every sample runs through its language's mask (masks kept
fixed); ``dense`` and ``dense_adapt`` fine-tune the whole backbone; ``adapters``
freezes the backbone and trains per-language bottleneck adapters and the CTC head.
The conv feature encoder can stay frozen (usual for wav2vec 2.0 fine-tuning). The LID
head reads only the shared conv features, so it is trained afterwards on its own,
with everything else frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from model.network import LassModel
from model.train import checkpoint as ckpt
from model.train.adapters import LanguageAdapters
from model.train.artifacts import save_artifact, stage_record
from model.train.config import FinetuneConfig
from model.train.context import Context
from model.train.inputs import make_inputs
from model.train.loop import train_stage_loop
from model.train.objectives import StepResult, ctc_loss, restrict_logits
from model.vocab import Vocabulary


def allowed_columns(vocab: Vocabulary, languages: list[str]) -> Tensor:
    """``[L, V]`` bool: blank + each language's alphabet columns (rows follow ``languages``)."""
    table = torch.zeros(len(languages), len(vocab), dtype=torch.bool)
    for i, lang in enumerate(languages):
        table[i, vocab.language_token_ids(lang)] = True
    return table


def ctc_step(model: LassModel, batch: Any, allowed: Tensor | None) -> StepResult:
    """CTC loss of one batch through each sample's sub-network (dense when no masks are set)."""
    out = model(batch.waveforms, batch.lengths, batch.lang_ids)
    logits = restrict_logits(out.logits, allowed, batch.lang_ids)
    per_sample = ctc_loss(logits, out.lengths, batch.targets, batch.target_lengths)
    return StepResult(
        loss=per_sample.mean(),
        weight=float(per_sample.shape[0]),
        metrics={"ctc": float(per_sample.detach().mean())},
    )


def balanced_language_weights(lang_ids: Sequence[int], num_languages: int) -> Tensor:
    """``[L]`` loss weights ``N / (L' * n_l)`` (``L'`` languages present, ``n_l`` utterances of
    language ``l``, 0 for an absent one): each language then carries the same total weight,
    and a weighted mean over the whole set is the mean of the per-language means."""
    counts = torch.bincount(torch.as_tensor(list(lang_ids)), minlength=num_languages).double()
    present = int((counts > 0).sum())
    weights = torch.zeros(num_languages, dtype=torch.double)
    weights[counts > 0] = counts.sum() / (present * counts[counts > 0])
    return weights.float()


def lid_step(model: LassModel, batch: Any, weights: Tensor | None = None) -> StepResult:
    logits = model.identify_language(batch.waveforms, batch.lengths)
    loss = F.cross_entropy(logits.float(), batch.lang_ids, weight=weights)
    accuracy = float((logits.argmax(-1) == batch.lang_ids).float().mean())
    # The loss is a mean weighted by class: its units are the batch's summed class weights,
    # so that ranks of unlike batches combine into one process's loss (distributed.py).
    units = float(logits.shape[0]) if weights is None else float(weights[batch.lang_ids].sum())
    return StepResult(loss, units, {"lid_accuracy": accuracy})


def trainable_parameters(model: LassModel, cfg: FinetuneConfig, method: str) -> list[Any]:
    """Which weights fine-tuning updates, per method (heads only, never the LID head here)."""
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.freeze_feature_encoder or method == "adapters":
        model.feature_extractor.requires_grad_(False)
    if model.lid_head is not None:
        model.lid_head.requires_grad_(False)
    if method == "adapters":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("ctc_head.", "adapters.")))
    return [p for p in model.parameters() if p.requires_grad]


def run_finetune(ctx: Context, init: Path | None = None) -> Path:
    """Run (or resume) CTC fine-tuning and LID training; returns ``<work>/finetune/model.pt``."""
    out = ctx.output("finetune")
    if out.exists():
        ctx.echo(f"finetune: {out} exists, skipping")
        return out
    cfg = ctx.cfg.finetune
    method = ctx.cfg.method
    art = ctx.input_artifact("finetune", init)
    vocab = art.vocab
    device = ctx.device
    model = art.model.to(device)
    masks = ctx.masks(required=True)
    model.set_masks(masks)
    adapters = None
    if method == "adapters":
        with ckpt.seeded(cfg.seed):
            adapters = LanguageAdapters.for_model(model, cfg.adapter_dim)
        if "adapters" in art.heads:
            adapters.load_state_dict(art.heads["adapters"])
        adapters.attach(model)
    allowed = allowed_columns(vocab, model.languages).to(device) if cfg.restrict_vocab else None
    params = trainable_parameters(model, cfg, method)
    inputs = make_inputs(ctx, "train", cfg, mode="mixed", with_text=True)
    modules: dict[str, torch.nn.Module] = {"model": model}
    train_stage_loop(
        ctx,
        inputs,
        name="finetune",
        out_dir=ctx.stage_dir("finetune"),
        cfg=cfg,
        modules=modules,
        params=params,
        step_fn=lambda batch, step: ctc_step(model, batch, allowed),
    )
    wanted = ctx.cfg.model.lid_input
    if model.lid_head is not None and model.lid_input != wanted:
        # The earlier stages' model carries another kind of LID head: LID training starts
        # from a fresh head of the configured kind (the CTC weights are unchanged).
        ctx.echo(f"finetune: new LID head reading {wanted!r} (was {model.lid_input!r})")
        model.replace_lid_head(wanted)
    if model.lid_head is not None and cfg.lid_steps > 0:
        for p in model.parameters():
            p.requires_grad_(False)
        model.lid_head.requires_grad_(True)
        lid_inputs = make_inputs(ctx, "train", cfg, mode="mixed", with_text=False)
        lid_weights = (
            balanced_language_weights(lid_inputs.dataset.lang_ids, len(model.languages)).to(device)
            if cfg.lid_balance
            else None
        )
        train_stage_loop(
            ctx,
            lid_inputs,
            name="finetune-lid",
            out_dir=ctx.stage_dir("finetune") / "lid",
            cfg=cfg,
            modules={"lid_head": model.lid_head},
            params=list(model.lid_head.parameters()),
            step_fn=lambda batch, step: lid_step(model, batch, lid_weights),
            steps=cfg.lid_steps,
            lr=cfg.lid_lr,
        )
    for p in model.parameters():
        p.requires_grad_(True)
    if adapters is not None:
        adapters.detach_from(model)
        art.heads["adapters"] = {k: v.detach().cpu() for k, v in adapters.state_dict().items()}
    model.set_masks(None)
    art.masks = masks
    art.history.append(stage_record("finetune", cfg, method=method))
    if ctx.dist.is_main:
        save_artifact(out, art)
    return out
