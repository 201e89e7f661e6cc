"""``pipeline CONFIG``: every stage the method needs, in order, from one config file.

Each stage skips itself when its output exists and resumes from its checkpoint when
it was interrupted, so re-running the same command after a kill continues the run.

Stages per method (``stages`` in the config can only narrow this list):

    lass         corpus pretrain prune adapt finetune lm evaluate export
    dense        corpus pretrain             finetune lm evaluate export   (XLSR baseline)
    dense_adapt  corpus pretrain       adapt finetune lm evaluate export
    adapters     corpus pretrain             finetune lm evaluate          (MMS-style)

``lm`` runs before ``evaluate`` so that the beam search can be scored with the LM.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from model.atomic import atomic_write_text
from model.train.config import PipelineConfig
from model.train.context import Context

METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "lass": ("corpus", "pretrain", "prune", "adapt", "finetune", "lm", "evaluate", "export"),
    "dense": ("corpus", "pretrain", "finetune", "lm", "evaluate", "export"),
    "dense_adapt": ("corpus", "pretrain", "adapt", "finetune", "lm", "evaluate", "export"),
    "adapters": ("corpus", "pretrain", "finetune", "lm", "evaluate"),
}


def planned_stages(cfg: PipelineConfig) -> list[str]:
    wanted = set(cfg.stages)
    stages = [s for s in METHOD_STAGES[cfg.method] if s in wanted]
    if "corpus" in stages and not cfg.data.corpus:
        stages.remove("corpus")
    return stages


def stage_runners() -> dict[str, Callable[[Context], object]]:
    from model.train.adapt import run_adapt
    from model.train.export import run_export
    from model.train.finetune import run_finetune
    from model.train.pretrain import run_pretrain
    from model.train.prune import run_prune
    from model.train.tasks import run_corpus, run_evaluate, run_lm

    return {
        "corpus": run_corpus,
        "pretrain": run_pretrain,
        "prune": run_prune,
        "adapt": run_adapt,
        "finetune": run_finetune,
        "evaluate": run_evaluate,
        "lm": run_lm,
        "export": run_export,
    }


def run_pipeline(ctx: Context) -> list[str]:
    """Run the planned stages; returns their names. The config is saved in the work folder."""
    stages = planned_stages(ctx.cfg)
    if ctx.dist.is_main:
        atomic_write_text(
            ctx.work_dir / "config.json", json.dumps(ctx.cfg.to_dict(), indent=1, default=str)
        )
    runners = stage_runners()
    for stage in stages:
        ctx.echo(f"[bold cyan]== {stage} ==")
        runners[stage](ctx)
    return stages


def work_dir_of(cfg: PipelineConfig, override: Path | None) -> Path:
    return override if override is not None else cfg.resolve(cfg.work_dir)
