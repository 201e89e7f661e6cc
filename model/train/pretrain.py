"""``pretrain``: wav2vec 2.0 self-supervised training on unlabelled multilingual audio.

Our stand-in for XLS-R pre-training: from scratch, or continuing a loaded checkpoint
(``model.init_from``: a local Hugging Face wav2vec2 folder or a lass ``model.pt``).
``train_contrastive`` is shared with ``adapt``, which runs the same objective through
the language masks.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from model.masks import LanguageMasks
from model.train import checkpoint as ckpt
from model.train.artifacts import Artifact, save_artifact, stage_record
from model.train.config import ContrastiveConfig, LoopConfig
from model.train.context import Context
from model.train.inputs import make_inputs
from model.train.loop import train_stage_loop
from model.train.metrics import read_metrics
from model.train.objectives import ContrastiveHead, StepResult, contrastive_step


def contrastive_head(art: Artifact, cfg: ContrastiveConfig, seed: int) -> ContrastiveHead:
    """The head a previous contrastive stage saved (when it fits), else a fresh one whose
    weights depend on ``seed`` alone."""
    config = art.model.config
    with ckpt.seeded(seed):
        head = ContrastiveHead(config.feature_dim, config.encoder_embed_dim, cfg)
    saved = art.heads.get("contrastive")
    if saved is not None:
        own = head.state_dict()
        if all(k in saved and saved[k].shape == v.shape for k, v in own.items()):
            head.load_state_dict(saved)
    return head


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything but the CTC and LID heads (the contrastive objective never reaches them)."""
    return [
        p for name, p in model.named_parameters() if not name.startswith(("ctc_head.", "lid_head."))
    ]


def train_contrastive(
    ctx: Context,
    name: str,
    out_dir: Path,
    loop: LoopConfig,
    objective: ContrastiveConfig,
    art: Artifact,
    masks: LanguageMasks | None,
) -> Artifact:
    """Train ``art.model`` with the wav2vec 2.0 loss; with ``masks`` each sample runs (and
    updates) only its language's sub-network. Returns the artifact with the trained head."""
    device = ctx.device
    model = art.model.to(device)
    model.set_masks(masks)
    head = contrastive_head(art, objective, loop.seed).to(device)
    inputs = make_inputs(ctx, "train", loop, mode="mixed", with_text=False)

    def step_fn(batch: object, step: int) -> StepResult:
        lang_ids = batch.lang_ids if masks is not None else None  # type: ignore[attr-defined]
        return contrastive_step(
            model,
            head,
            batch.waveforms,  # type: ignore[attr-defined]
            batch.lengths,  # type: ignore[attr-defined]
            lang_ids,
            objective,
            step,
        )

    train_stage_loop(
        ctx,
        inputs,
        name=name,
        out_dir=out_dir,
        cfg=loop,
        modules={"model": model, "head": head},
        params=backbone_parameters(model) + list(head.parameters()),
        step_fn=step_fn,
    )
    rows = read_metrics(out_dir)
    if rows and "code_perplexity" in rows[-1]:
        used = float(rows[-1]["code_perplexity"])
        if used <= 1.5 * objective.codebook_groups:
            ctx.echo(
                f"[yellow]{name}: the quantizer collapsed (code perplexity {used:.1f} for "
                f"{objective.codebook_groups} x {objective.codebook_entries} codes): the "
                "contrastive task is trivial. Try a smaller contrastive.quantizer_init_std "
                "(e.g. 0.3) or a larger diversity_weight."
            )
    art.heads["contrastive"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    return art


def run_pretrain(ctx: Context, init: Path | None = None) -> Path:
    """Run (or resume) the pretrain stage; returns ``<work>/pretrain/model.pt``."""
    out = ctx.output("pretrain")
    if out.exists():
        ctx.echo(f"pretrain: {out} exists, skipping")
        return out
    cfg = ctx.cfg.pretrain
    art = ctx.input_artifact("pretrain", init)
    art = train_contrastive(
        ctx, "pretrain", ctx.stage_dir("pretrain"), cfg, cfg.contrastive, art, masks=None
    )
    art.model.set_masks(None)
    art.history.append(stage_record("pretrain", cfg))
    if ctx.dist.is_main:
        save_artifact(out, art)
    return out
