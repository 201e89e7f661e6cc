"""The training loop every stage shares: resumable, logged, optionally bf16 and data-parallel.

A stage supplies the modules to checkpoint, the parameters to train, a step function
``(batch, step) -> StepResult`` and a batch plan ``epoch -> [global batch of dataset
indices]`` (deterministic from the seed). The loop owns the optimizer, the schedule,
the progress bar, the metrics CSV and the checkpoint ``<out_dir>/checkpoint.pt``:
model(s), optimizer, scheduler, step, RNG states and the sampler position (epoch,
global batches consumed in it). Resuming replays nothing: it rebuilds the epoch's plan
and skips the consumed batches without loading their audio.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from model.train import checkpoint as ckpt
from model.train.clock import process_clock
from model.train.config import LoopConfig, OptimConfig
from model.train.distributed import DistInfo, ParallelStep, barrier, broadcast_modules
from model.train.metrics import MetricsLog
from model.train.objectives import StepResult
from model.train.progress import progress_bar

if TYPE_CHECKING:
    from model.train.context import Context
    from model.train.inputs import TrainInputs

CHECKPOINT = "checkpoint.pt"
BatchPlan = Callable[[int], list[list[int]]]  # epoch -> global batches of dataset indices
StepFn = Callable[[Any, int], StepResult]


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of ``epoch`` already consumed
    # Training seconds up to ``step``, summed over every call that resumed (stopped time
    # left out); checkpoints older than this field load it as 0.
    seconds: float = 0.0


def lr_factor(step: int, total: int, optim: OptimConfig) -> float:
    """Linear warm-up to 1, then linear/cosine decay to ``final_lr_scale`` (or constant)."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, total - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return optim.final_lr_scale + (1.0 - optim.final_lr_scale) * shape


def make_optimizer(params: Sequence[nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms and other vectors get no weight decay."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas, eps=optim.eps
    )


def batch_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor field of a (dataclass) batch to ``device``."""
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            f.name: getattr(batch, f.name).to(device)
            for f in dataclasses.fields(batch)
            if isinstance(getattr(batch, f.name), Tensor)
        }
        return dataclasses.replace(batch, **changes)
    return batch


def _audio_seconds(batch: Any) -> float:
    lengths = getattr(batch, "lengths", None)
    return float(lengths.sum()) / 16_000 if isinstance(lengths, Tensor) else 0.0


def train_loop(
    *,
    name: str,
    out_dir: Path,
    cfg: LoopConfig,
    modules: Mapping[str, nn.Module],
    params: Sequence[nn.Parameter],
    step_fn: StepFn,
    plan: BatchPlan,
    dataset: Dataset[Any],
    collate_fn: Callable[[list[Any]], Any],
    device: torch.device,
    dist: DistInfo | None = None,
    num_workers: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
) -> LoopState:
    """Train ``params`` for ``steps`` (default ``cfg.steps``), resuming from the checkpoint.

    ``stop_after``: return after this many steps in this call (tests of resume). Returns
    the final loop state; the checkpoint holds the same state on disk.
    """
    dist = dist or DistInfo()
    total = cfg.steps if steps is None else steps
    out_dir = Path(out_dir)
    params = [p for p in params if p.requires_grad]
    optim_cfg = cfg.optim if lr is None else dataclasses.replace(cfg.optim, lr=lr)
    state = LoopState()
    path = out_dir / CHECKPOINT
    saved = ckpt.load(path) if path.exists() else None
    if saved is not None:
        for key, module in modules.items():
            module.load_state_dict(saved["modules"][key])
        state = LoopState(**saved["state"])
        if state.step >= total:
            return state
    else:
        ckpt.seed_everything(cfg.seed + dist.rank)
        broadcast_modules(modules.values(), dist)
    # Under torchrun the step runs through DDP or FSDP ($LASS_DATA_PARALLEL); the optimizer
    # holds the parameters it gives (FSDP: sharded). One process wraps nothing.
    parallel = ParallelStep(modules, params, step_fn, dist)
    optimizer = make_optimizer(parallel.params, optim_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, optim_cfg)
    )
    if saved is not None:
        parallel.load_optimizer_state_dict(optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"][min(dist.rank, len(saved["rng"]) - 1)])
        if dist.is_main and not quiet:
            Console(stderr=True).print(f"{name}: resuming from step {state.step} ({path})")
    if dist.enabled and dist.is_main and not quiet:
        Console(stderr=True).print(f"{name}: {dist.world_size} ranks, {parallel.engine}")
    if state.step >= total:
        parallel.close()
        return state

    log = MetricsLog(out_dir, resume_step=state.step) if dist.is_main else None
    window: dict[str, float] = {}
    window_n = 0
    window_audio = 0.0
    # The process clock leaves out time the process was stopped (SIGSTOP): logged speeds
    # and elapsed seconds are those of training.
    clock = process_clock()
    window_start = clock.now()
    started = clock.now() - state.seconds  # elapsed seconds go on from the checkpoint's
    steps_this_call = 0
    for module in modules.values():
        module.train()

    def save() -> None:
        rngs = _gather_rng(dist)
        module_states = parallel.module_state_dicts(modules)
        optimizer_state = parallel.optimizer_state_dict(optimizer)
        if dist.is_main:
            ckpt.atomic_save(
                {
                    "modules": module_states,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "state": dataclasses.asdict(state),
                    "rng": rngs,
                    "config": dataclasses.asdict(cfg),
                },
                path,
            )
        barrier(dist)

    with progress_bar(quiet or not dist.is_main) as bar:
        task = bar.add_task(name, total=total, completed=state.step, info="")
        while state.step < total:
            # A global batch smaller than the number of ranks would leave a rank idle: every
            # rank skips it alike (before slicing, so the saved position stays consistent).
            batches = [b for b in plan(state.epoch) if len(b) >= dist.world_size]
            if not batches:
                raise RuntimeError(f"{name}: the batch plan for epoch {state.epoch} is empty")
            # Every rank takes its stride of each global batch.
            remaining = [b[dist.rank :: dist.world_size] for b in batches[state.batch_in_epoch :]]
            loader = DataLoader(
                dataset,
                batch_sampler=remaining,
                collate_fn=collate_fn,
                num_workers=num_workers,
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + state.epoch),
            )
            for batch in loader:
                batch = batch_to(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    result = parallel.forward(batch, state.step)
                loss = result.loss.float()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{name}: loss is {loss.item()} at step {state.step}")
                parallel.backward(loss, result.weight)
                gnorm = (
                    parallel.clip_grad_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip > 0 else 0.0
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch_in_epoch += 1
                state.seconds = clock.now() - started
                steps_this_call += 1

                window_n += 1
                window_audio += _audio_seconds(batch) * dist.world_size
                loss_value = float(loss.detach())
                for key, value in {
                    "loss": loss_value,
                    "grad_norm": gnorm,
                    **result.metrics,
                }.items():
                    window[key] = window.get(key, 0.0) + value
                bar.update(task, completed=state.step, info=f"loss {loss_value:.3f}")
                if log is not None and (state.step % cfg.log_every == 0 or state.step == total):
                    elapsed = clock.now() - window_start
                    log.log(
                        {
                            "step": state.step,
                            "epoch": state.epoch,
                            "lr": float(scheduler.get_last_lr()[0]),
                            "elapsed_s": state.seconds,
                            "audio_s_per_s": window_audio / max(elapsed, 1e-9),
                            **{k: v / window_n for k, v in window.items()},
                        }
                    )
                    window, window_n, window_audio = {}, 0, 0.0
                    window_start = clock.now()
                if state.step % cfg.checkpoint_every == 0 or state.step == total:
                    save()
                if state.step >= total or (
                    stop_after is not None and steps_this_call >= stop_after
                ):
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                continue
            break
    parallel.close()
    if log is not None:
        log.close()
    return state


def train_stage_loop(
    ctx: Context,
    inputs: TrainInputs,
    *,
    name: str,
    out_dir: Path,
    cfg: LoopConfig,
    modules: Mapping[str, nn.Module],
    params: Sequence[nn.Parameter],
    step_fn: StepFn,
    steps: int | None = None,
    lr: float | None = None,
) -> LoopState:
    """:func:`train_loop` over a stage's ``inputs`` (``model.train.inputs``), on the stage
    context's device and ranks, with its data workers and its quietness."""
    return train_loop(
        name=name,
        out_dir=out_dir,
        cfg=cfg,
        modules=modules,
        params=params,
        step_fn=step_fn,
        plan=inputs.plan,
        dataset=inputs.dataset,
        collate_fn=inputs.collate,
        device=ctx.device,
        dist=ctx.dist,
        num_workers=ctx.cfg.data.num_workers,
        steps=steps,
        lr=lr,
        quiet=ctx.quiet,
    )


def _gather_rng(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank r resumes with its own)."""
    mine = ckpt.rng_state()
    if not dist.enabled:
        return [mine]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, mine)
    return out
