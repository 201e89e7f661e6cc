"""Data-parallel training under ``torchrun``: one process per device, gradients averaged.

We average gradients ourselves (one flat ``all_reduce`` per step) instead of wrapping
the model in ``DistributedDataParallel``: the objectives call ``extract_features`` /
``encode`` / ``identify_language`` rather than ``forward`` (DDP only hooks
``forward``), and a masked or adapter step leaves some parameters without a
gradient on one rank but not another, which DDP's reducer rejects. Ranks are
weighted by their share of the loss units, so N processes with batches b_1..b_N give
exactly the gradient of one process with the concatenated global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the ``torchrun`` process group if ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def device_for(device: str, info: DistInfo) -> torch.device:
    """``cuda`` under torchrun means this process's local GPU."""
    if device == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def broadcast_modules(modules: Iterable[nn.Module], info: DistInfo) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not info.enabled:
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[nn.Parameter], local_weight: float, info: DistInfo) -> float:
    """Turn each rank's ``grad of (loss * local_weight)`` into the global weighted mean.

    Returns the global weight. Missing gradients count as zeros (a parameter unused on
    this rank but used on another).
    """
    if not info.enabled:
        if local_weight != 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(local_weight)
        return local_weight
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = [float(p.grad is not None) for p in params]
    flat = torch.cat(
        [g.reshape(-1).float() for g in grads]
        + [torch.tensor([*has_grad, local_weight], device=grads[0].device)]
    )
    dist.all_reduce(flat)
    total = float(flat[-1])
    used = flat[-1 - len(params) : -1]
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        # A parameter no rank touched keeps grad None, as in a single process.
        if used[i] > 0:
            p.grad = (flat[offset : offset + n] / total).view_as(p).to(p.dtype)
        else:
            p.grad = None
        offset += n
    return total


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo, wait: bool = True) -> None:
    """Leave the process group once every rank got here.

    Without the barrier a rank that finishes first (rank 1, while rank 0 still writes the
    stage's artifact) tears gloo down under its peer, which aborts with "terminate called
    without an active exception". ``wait=False`` after an error: the other ranks may never
    reach the barrier.
    """
    if info.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
