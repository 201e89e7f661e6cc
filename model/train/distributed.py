"""Data-parallel training under ``torchrun``: one process per device, gradients averaged.

Ranks are weighted by their share of the loss units (``StepResult.weight``), so N
processes with batches b_1..b_N give exactly the gradient of one process with the
concatenated global batch. :class:`ParallelStep` runs a step's forward and backward
through one of two engines, chosen with ``$LASS_DATA_PARALLEL`` (an environment
variable rather than a config key, so recorded configs do not change):

* ``ddp`` (the default): ``DistributedDataParallel``. Gradients are all-reduced in
  buckets while the backward pass still runs, and live in those buckets (no second
  copy); a hand-written flat ``all_reduce`` after the backward pass was slower
  (docs/benchmarks.md, "Data-parallel step"). The objectives call
  ``extract_features``/``encode``/``identify_language`` rather than ``forward``, so the
  trained modules are wrapped in :class:`StepModule`, whose ``forward`` runs the whole
  step; ``find_unused_parameters`` because masked or adapter steps leave parameters
  without a gradient on some ranks and not others (not ``static_graph``: which
  parameters a step uses changes with the languages in its batch).
* ``fsdp``: FSDP2 (``fully_shard``): parameters, gradients and AdamW's moments sharded
  over the ranks, for the ``xls-r-1b``/``2b`` presets whose training state does not fit
  one GPU. Each transformer layer is one FSDP unit; everything else is gathered for the
  whole step. When the loop ends the modules are plain modules again (:meth:`close`).

One process never wraps anything: ``grad of (loss * weight)`` divided by ``weight``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

from model.train.objectives import StepResult

DATA_PARALLEL_ENV = "LASS_DATA_PARALLEL"
ENGINES = ("ddp", "fsdp")
StepFn = Callable[[Any, int], StepResult]


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


def data_parallel_engine() -> str:
    """The engine ``$LASS_DATA_PARALLEL`` names (one of :data:`ENGINES`; default ``ddp``)."""
    value = os.environ.get(DATA_PARALLEL_ENV, "").strip().lower() or "ddp"
    if value not in ENGINES:
        raise ValueError(f"{DATA_PARALLEL_ENV}={value!r}: expected one of {', '.join(ENGINES)}")
    return value


class StepModule(nn.Module):
    """The trained modules as one module whose ``forward`` runs the training step.

    DDP and FSDP act through ``forward``: hooks around it, and the autograd graph of its
    output. The objectives call other methods of the model, so the whole step is this
    module's forward. It returns the loss (a scalar); the step's whole result is kept in
    :attr:`result`.
    """

    def __init__(self, modules: Mapping[str, nn.Module], step_fn: StepFn):
        super().__init__()
        self.parts = nn.ModuleDict(dict(modules))
        self.step_fn = step_fn
        self.result: StepResult | None = None

    def forward(self, batch: Any, step: int) -> Tensor:
        self.result = self.step_fn(batch, step)
        return self.result.loss


class ParallelStep:
    """This rank's part of a training step: forward, backward, the global batch's gradients.

    Per step: ``result = ps.forward(batch, step)`` (under autocast if wanted), then
    ``ps.backward(result.loss.float(), result.weight)``; afterwards every trained
    parameter's ``grad`` is the gradient of the global batch's mean loss, or None when
    no rank used the parameter (as in one process). :attr:`params` are the parameters
    the optimizer must hold: under FSDP the sharded ones, not those given. The checkpoint
    helpers give and take whole tensors, so a checkpoint does not depend on the engine.
    :meth:`close` when the loop ends.

    ``engine``: one of :data:`ENGINES` (default: ``$LASS_DATA_PARALLEL``); ignored, and
    nothing wrapped, in a single process.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        params: Sequence[nn.Parameter],
        step_fn: StepFn,
        info: DistInfo,
        engine: str | None = None,
    ):
        self.info = info
        self.step_fn = step_fn
        self.params = list(params)
        self.engine = "local" if not info.enabled else engine or data_parallel_engine()
        if self.engine not in ("local", *ENGINES):
            raise ValueError(f"data-parallel engine {self.engine!r}: one of {ENGINES}")
        self.root: StepModule | None = None
        self._ddp: DistributedDataParallel | None = None
        self._fsdp_names: dict[int, str] = {}  # id of a gathered parameter -> its name
        self._fsdp_trained: list[tuple[str, nn.Parameter]] = []  # sharded, requiring grad
        self._hooks: list[RemovableHandle] = []
        self._before_fsdp: list[_Before] = []
        if self.engine not in ("ddp", "fsdp"):
            return
        root = StepModule(modules, step_fn)
        if self.engine == "fsdp":
            _check_fsdp_can_run(root)
        names = {id(p): n for n, p in root.named_parameters()}
        stray = sum(id(p) not in names for p in self.params)
        if stray:
            raise ValueError(f"{stray} trained parameters belong to none of {sorted(modules)}")
        trained = [names[id(p)] for p in self.params]
        if self.engine == "ddp":
            self._ddp = DistributedDataParallel(
                root,
                # A masked or adapter step leaves parameters unused on some ranks; DDP then
                # reduces zeros for them, and leaves grad None where no rank used one.
                find_unused_parameters=True,
                # Buffers stay per rank, as in one process: no broadcast before each step.
                forward_sync_buffers=False,
                # Gradients live in DDP's buckets: no second fp32 copy of every gradient.
                gradient_as_bucket_view=True,
            )
        else:
            self._before_fsdp = _fully_shard(root, info.world_size)
            current = dict(root.named_parameters())
            self.params = [current[n] for n in trained]
            self._fsdp_trained = [(n, p) for n, p in current.items() if p.requires_grad]
            self._track_fsdp_parameters(root)
        self.root = root

    # ------------------------------------------------------------------ the step
    def forward(self, batch: Any, step: int) -> StepResult:
        """Run the step function on this rank's ``batch`` (through DDP/FSDP when wrapped)."""
        if self.root is None:
            return self.step_fn(batch, step)
        self._fsdp_names.clear()
        (self._ddp or self.root)(batch, step)
        result, self.root.result = self.root.result, None
        assert result is not None
        return result

    def backward(self, loss: Tensor, weight: float) -> None:
        """Backward of this rank's ``loss`` (a scalar mean over ``weight`` units), then the
        global batch's gradients in every trained parameter's ``grad``."""
        if self.engine == "local":
            (loss * weight).backward()
            if weight != 1.0:  # the weighted mean below with one rank: W = weight
                for p in self.params:
                    if p.grad is not None:
                        p.grad.div_(weight)
            return
        used = self._fsdp_used(loss) if self.engine == "fsdp" else []
        stats = torch.tensor([weight, *used], dtype=torch.float64, device=loss.device)
        dist.all_reduce(stats)
        total = float(stats[0])
        # DDP and FSDP average the ranks' gradients: (1/N) sum_r grad(L_r). With rank r's
        # loss scaled to L_r = loss_r * N * w_r / W (W = sum_r w_r, the global units), that
        # is sum_r w_r * grad(loss_r) / W: the gradient of the mean over the global batch.
        (loss * (self.info.world_size * weight / total)).backward()
        # FSDP reduces zeros for every parameter (set_reduce_scatter_unused_params); one no
        # rank used gets grad None back, so AdamW skips it as it would in one process.
        for (_, p), count in zip(self._fsdp_trained, stats[1:].tolist(), strict=True):
            if count == 0:
                p.grad = None

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradients to a global 2-norm of at most ``max_norm``; the norm before."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return float(_whole(norm))

    # ------------------------------------------------------------ checkpoints
    def module_state_dicts(self, modules: Mapping[str, nn.Module]) -> dict[str, dict[str, Any]]:
        """Each module's ``state_dict`` with whole tensors (FSDP: gathered onto the CPU, on
        every rank: all ranks must call this)."""
        if self.engine != "fsdp":
            return {key: module.state_dict() for key, module in modules.items()}
        return {
            key: {name: _whole(t) for name, t in module.state_dict().items()}
            for key, module in modules.items()
        }

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()`` with whole tensors (FSDP: gathered; all ranks call)."""
        saved = optimizer.state_dict()
        if self.engine == "fsdp":
            saved["state"] = {
                index: {key: _whole(value) for key, value in per_param.items()}
                for index, per_param in sorted(saved["state"].items())
            }
        return saved

    def load_optimizer_state_dict(
        self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        """Load what :meth:`optimizer_state_dict` gave (under any engine) into ``optimizer``."""
        optimizer.load_state_dict(saved)
        if self.engine != "fsdp":
            return
        from torch.distributed.tensor import DTensor, distribute_tensor

        for p in self.params:
            if not isinstance(p, DTensor):
                continue
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                # The moments are shaped like the parameter: shard them like it.
                if not isinstance(value, DTensor) and value.shape == p.shape:
                    state[key] = distribute_tensor(value, p.device_mesh, p.placements)

    def close(self) -> None:
        """Leave the modules as they were given, with the trained values: no DDP hooks;
        under FSDP every parameter whole again on every rank (a collective: all ranks call
        this, after a step that finished)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._ddp is not None:
            # The reducer's hooks sit on the parameters; a later loop over the same modules
            # (finetune's LID step) must not fire them.
            self._ddp._remove_autograd_hooks()
            self._ddp = None
        if self.engine == "fsdp" and self.root is not None:
            _unshard_for_good(self.root, self._before_fsdp)
            self._fsdp_trained = []
        self.root = None

    # ------------------------------------------------------------------ FSDP
    def _track_fsdp_parameters(self, root: nn.Module) -> None:
        """Remember, in each FSDP unit's forward, which gathered tensor is which parameter."""
        from torch.distributed.fsdp import FSDPModule

        for prefix, module in root.named_modules():
            if isinstance(module, FSDPModule) and isinstance(module, nn.Module):
                # Runs after FSDP's own pre-forward hook (prepended), so on gathered tensors.
                self._hooks.append(module.register_forward_pre_hook(self._remember(prefix)))

    def _remember(self, prefix: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, _: Any) -> None:
            for name, p in module.named_parameters(prefix=prefix):
                self._fsdp_names[id(p)] = name

        return hook

    def _fsdp_used(self, loss: Tensor) -> list[float]:
        """Per sharded trained parameter: 1.0 if ``loss`` depends on it on this rank.

        DDP finds this by walking the autograd graph; FSDP reduces zeros for unused
        parameters instead, so we walk the graph ourselves (to its AccumulateGrad leaves).
        """
        reached: set[str] = set()
        seen: set[Any] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            leaf = getattr(node, "variable", None)
            if leaf is not None and id(leaf) in self._fsdp_names:
                reached.add(self._fsdp_names[id(leaf)])
            stack.extend(child for child, _ in node.next_functions)
        return [float(name in reached) for name, _ in self._fsdp_trained]


def _whole(t: Any) -> Any:
    """A DTensor gathered whole onto the CPU (a collective); anything else as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor().cpu() if isinstance(t, DTensor) else t


def fsdp_units(root: nn.Module) -> list[nn.Module]:
    """The modules FSDP gathers one at a time: each member of a ``ModuleList`` named
    ``layers`` (the transformer's layers, nearly all of a large model's weights).

    A unit's parameters are gathered by a hook on its ``forward``, so only modules that
    are called can be units: the conv feature encoder's first block, for one, is used
    through its submodules. Everything outside the units is gathered for the whole step.
    """
    return [
        layer
        for name, module in root.named_modules()
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] == "layers"
        for layer in module
    ]


@dataclass
class _Before:
    """A module as it was before ``fully_shard``: its class and its hook tables' keys."""

    module: nn.Module
    cls: type
    hooks: dict[str, set[int]]


def _hook_tables(module: nn.Module) -> dict[str, dict[int, Any]]:
    """``_forward_pre_hooks``, ``_load_state_dict_post_hooks``, ...: handle id -> hook."""
    return {k: v for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict)}


def _check_fsdp_can_run(root: nn.Module) -> None:
    """FSDP gathers a unit's weights in its forward, a collective every rank must join: a
    layer skipped on one rank only (LayerDrop, drawn per rank) would hang the step. (The
    train/eval mode is no guide: the loop switches its modules to training after this.)"""
    for name, module in root.named_modules():
        drop = getattr(module, "layer_drop", 0.0)
        if isinstance(drop, float) and drop > 0:
            raise ValueError(
                f"FSDP needs every rank to run every layer, but {name} drops layers "
                f"(layer_drop {drop}): set [model.overrides] encoder_layer_drop = 0.0, "
                f"or {DATA_PARALLEL_ENV}=ddp"
            )


def _fully_shard(root: StepModule, world_size: int) -> list[_Before]:
    """Shard ``root`` (its :func:`fsdp_units` first); returns what :func:`_unshard_for_good`
    needs to undo it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    before = [
        _Before(m, type(m), {k: set(t) for k, t in _hook_tables(m).items()}) for m in root.modules()
    ]
    mesh = init_device_mesh(next(root.parameters()).device.type, (world_size,))
    for unit in fsdp_units(root):
        fully_shard(unit, mesh=mesh)
    sharded = fully_shard(root, mesh=mesh)
    # A parameter unused on one rank but used on another: every rank must reduce-scatter
    # the same tensors, so the unused ones count as zeros.
    sharded.set_reduce_scatter_unused_params(True)
    return before


def _unshard_for_good(root: nn.Module, before: list[_Before]) -> None:
    """Undo ``fully_shard``: whole parameters (a collective), the modules' own classes, and
    none of the hooks and state it added.

    FSDP2 has no public inverse of ``fully_shard``, and the stages keep using their
    modules after the loop (save them, train the LID head in a second loop), so the
    modules are put back as :func:`_fully_shard` found them: hook tables cut back to the
    handles they had, the class restored, the composable-API registries' entries dropped.
    tests/train/test_ddp.py checks the result trains, saves, loads and shards again.
    """
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed._composable_state import _module_state_mapping
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.reshard()  # the sharded parameters registered, not views of gathered ones
    whole: dict[int, nn.Parameter] = {}
    for p in root.parameters():  # the same order on every rank: full_tensor is a collective
        if isinstance(p, DTensor):
            whole[id(p)] = nn.Parameter(p.full_tensor().detach(), requires_grad=p.requires_grad)
    for b in before:
        for name, table in _hook_tables(b.module).items():
            for handle in [h for h in table if h not in b.hooks.get(name, set())]:
                del table[handle]
        for attr in [k for k in vars(b.module) if k in (STATE_KEY, REGISTRY_KEY) or "fsdp" in k]:
            del b.module.__dict__[attr]
        _module_state_mapping.pop(b.module, None)
        b.module.__class__ = b.cls
        for name, old in list(b.module._parameters.items()):
            if old is not None and id(old) in whole:
                b.module._parameters[name] = whole[id(old)]


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
