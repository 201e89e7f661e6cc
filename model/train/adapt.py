"""``adapt``: language-adaptive continued pre-training with the sparse sub-networks.

The paper's central step: the wav2vec 2.0 objective again, on mixed-language batches,
but every sample runs through its language's mask, so it updates only its
sub-network; a weight shared by several languages accumulates all their gradients,
a weight a language pruned never hears from it. The ``dense_adapt`` baseline runs the
same objective without masks (language-adaptive pre-training of the whole model).
"""

from __future__ import annotations

from pathlib import Path

from model.train.artifacts import save_artifact, stage_record
from model.train.context import Context, StageError
from model.train.pretrain import train_contrastive


def run_adapt(ctx: Context, init: Path | None = None) -> Path:
    """Run (or resume) the adapt stage; returns ``<work>/adapt/model.pt``."""
    out = ctx.output("adapt")
    if out.exists():
        ctx.echo(f"adapt: {out} exists, skipping")
        return out
    if ctx.cfg.method not in ("lass", "dense_adapt"):
        raise StageError(f"method {ctx.cfg.method!r} has no adapt stage (lass, dense_adapt do)")
    cfg = ctx.cfg.adapt
    art = ctx.input_artifact("adapt", init)
    masks = ctx.masks(required=True)
    art = train_contrastive(ctx, "adapt", ctx.stage_dir("adapt"), cfg, cfg.contrastive, art, masks)
    art.model.set_masks(None)
    art.masks = masks
    art.history.append(stage_record("adapt", cfg, masked=masks is not None))
    if ctx.dist.is_main:
        save_artifact(out, art)
    return out
