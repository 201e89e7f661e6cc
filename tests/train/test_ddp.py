"""The data-parallel engines (``model.train.distributed.ParallelStep``) on 2 gloo processes.

Each engine must give, rank for rank, what one process gives with the concatenated
global batch: the same gradients (None where no rank used a parameter), the same
gradient norm, the same weights after AdamW steps, whole-tensor checkpoints that resume
to the same weights, and, after ``close``, plain modules that a second loop can wrap
again. The model is the ``tiny`` preset with language masks and per-language adapters;
the two ranks see different languages and different numbers of utterances, so some
parameters are used on one rank only and some on none.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from model.config import get_preset
from model.masks import LanguageMasks
from model.network import LassModel
from model.train.adapters import LanguageAdapters
from model.train.config import OptimConfig
from model.train.distributed import DistInfo, ParallelStep, fsdp_units
from model.train.finetune import ctc_step, lid_step
from model.train.loop import make_optimizer

LANGUAGES = ["aa", "bb", "cc"]  # "cc" is in no batch: its adapters are used on no rank
# Rank 0 takes the first 3 utterances ("aa"), rank 1 the last 2 ("bb"). Contiguous rather
# than the loop's strides: with masks the transformer sorts a batch by language and the
# adapters index the caller's order, so the test keeps every batch sorted.
GLOBAL_LANG_IDS = [0, 0, 0, 1, 1]
RANK_ROWS = [slice(0, 3), slice(3, 5)]
OTHER = {"ddp": "fsdp", "fsdp": "ddp"}
VOCAB = 12


@dataclass
class Batch:
    waveforms: Tensor
    lengths: Tensor
    lang_ids: Tensor
    targets: Tensor
    target_lengths: Tensor

    def take(self, rows: slice) -> Batch:
        return Batch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def make_model() -> tuple[LassModel, Batch]:
    """The same model, masks, adapters and global batch on every rank."""
    torch.manual_seed(0)
    model = LassModel(get_preset("tiny").with_dropout(0.0), VOCAB, LANGUAGES)
    masks = LanguageMasks(model.prunable_shapes())
    gen = torch.Generator().manual_seed(1)
    for lang in LANGUAGES:
        masks.add(lang, {n: torch.rand(s, generator=gen) < 0.7 for n, s in masks.shapes.items()})
    model.set_masks(masks)
    adapters = LanguageAdapters.for_model(model, 16)
    for p in adapters.parameters():  # away from the zero init, so every adapter weight matters
        nn.init.normal_(p, std=0.05, generator=gen)
    adapters.attach(model)
    model.feature_extractor.requires_grad_(False)  # frozen, as finetune does by default
    n, samples = len(GLOBAL_LANG_IDS), 8000
    lengths = torch.tensor([8000, 7000, 6400, 8000, 5600])
    waveforms = torch.randn(n, samples, generator=gen) * 0.1
    waveforms[torch.arange(samples)[None, :] >= lengths[:, None]] = 0.0
    batch = Batch(
        waveforms=waveforms,
        lengths=lengths,
        lang_ids=torch.tensor(GLOBAL_LANG_IDS),
        targets=torch.randint(1, VOCAB, (n, 6), generator=gen),
        target_lengths=torch.tensor([6, 4, 5, 6, 3]),
    )
    return model, batch


def ctc_params(model: LassModel) -> list[nn.Parameter]:
    # The LID head requires grad but the CTC step never uses it: no rank gives it a gradient.
    return [p for n, p in model.named_parameters() if p.requires_grad and "lid_head" not in n]


def run_steps(model: LassModel, batch: Batch, info: DistInfo, engine: str | None) -> dict[str, Any]:
    """Two CTC steps, a checkpoint between them and its resume, close, then a LID step
    through a second wrapper over the same model. Returns whole tensors (rank 0's view)."""
    local = batch.take(RANK_ROWS[info.rank]) if info.enabled else batch
    out: dict[str, Any] = {}

    def ctc(b: Any, step: int) -> Any:
        return ctc_step(model, b, None)

    ps = ParallelStep({"model": model}, ctc_params(model), ctc, info, engine)
    optimizer = make_optimizer(ps.params, OptimConfig(lr=1e-3, warmup_steps=0))
    names = {id(p): n for n, p in (ps.root or model).named_parameters()}
    result = ps.forward(local, 0)
    ps.backward(result.loss.float(), result.weight)
    out["grads"] = {
        names[id(p)].removeprefix("parts.model."): None if p.grad is None else ps_whole(p.grad)
        for p in ps.params + [q for q in (ps.root or model).parameters() if q.requires_grad]
    }
    out["norm"] = ps.clip_grad_norm(1e9)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # Copies: the state dicts share storage with the live tensors (the loop writes them at once).
    saved_modules = copy.deepcopy(ps.module_state_dicts({"model": model}))
    saved_optimizer = copy.deepcopy(ps.optimizer_state_dict(optimizer))

    def second_step(ps: ParallelStep, optimizer: torch.optim.Optimizer) -> None:
        result = ps.forward(local, 1)
        ps.backward(result.loss.float(), result.weight)
        ps.clip_grad_norm(1e9)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    second_step(ps, optimizer)
    ps.close()
    out["after_two"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["plain"] = type(model) is LassModel and all(
        type(p) is nn.Parameter for p in model.parameters()
    )
    copy.deepcopy(model)  # FSDP forbids deepcopy while applied

    # Resume from the checkpoint taken after step 1, under the same engine and under the
    # other one (checkpoints hold whole tensors): the same weights after step 2.
    for resume_engine in [engine, OTHER.get(engine or "")]:
        model.load_state_dict(saved_modules["model"])
        ps = ParallelStep({"model": model}, ctc_params(model), ctc, info, resume_engine)
        optimizer = make_optimizer(ps.params, OptimConfig(lr=1e-3, warmup_steps=0))
        # A copy: loading keeps tensors it need not move, and the step updates them in place.
        ps.load_optimizer_state_dict(optimizer, copy.deepcopy(saved_optimizer))
        second_step(ps, optimizer)
        ps.close()
        out[f"resumed {resume_engine}"] = {k: v.clone() for k, v in model.state_dict().items()}

    # A second loop over the same modules with other trained parameters (finetune's LID).
    for p in model.parameters():
        p.requires_grad_(False)
    assert model.lid_head is not None
    model.lid_head.requires_grad_(True)

    def lid(b: Any, step: int) -> Any:
        return lid_step(model, b)

    ps = ParallelStep({"model": model}, list(model.lid_head.parameters()), lid, info, engine)
    optimizer = make_optimizer(ps.params, OptimConfig(lr=1e-3, warmup_steps=0))
    result = ps.forward(local, 0)
    ps.backward(result.loss.float(), result.weight)
    optimizer.step()
    ps.close()
    out["after_lid"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def ps_whole(t: Tensor) -> Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().clone()


def _worker(rank: int, store: str, engine: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model, batch = make_model()
        result = run_steps(model, batch, DistInfo(rank=rank, world_size=2), engine)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def run_two_ranks(tmp_path: Path, engine: str) -> dict[str, Any]:
    out = tmp_path / f"{engine}.pt"
    ctx = mp.start_processes(
        _worker,
        args=(str(tmp_path / f"{engine}.store"), engine, str(out)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = 600.0
    while not ctx.join(timeout=5.0):
        deadline -= 5.0
        if deadline <= 0:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"{engine}: the 2 ranks did not finish in 600 s")
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    """One process, the whole global batch, on one thread as each rank: the kernels then
    sum in the same order (on 2 threads the gradients differed by ~1.4e-6 and the file
    failed when run alone, passing only after a test that had set 1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batch = make_model()
        return run_steps(model, batch, DistInfo(), None)
    finally:
        torch.set_num_threads(threads)


def assert_close(a: dict[str, Any], b: dict[str, Any], tol: float, what: str) -> None:
    """Every tensor within ``tol`` times its largest magnitude (at least 1); Nones alike."""
    assert a.keys() == b.keys(), what
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is None and b[key] is None, f"{what} {key}: one is None"
            continue
        if not a[key].numel():
            continue
        scale = max(1.0, float(b[key].float().abs().max()))
        diff = float((a[key].float() - b[key].float()).abs().max())
        assert diff <= tol * scale, f"{what} {key}: max |diff| {diff:.3g}, scale {scale:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(engine: str, single: dict[str, Any], tmp_path: Path) -> None:
    two = run_two_ranks(tmp_path, engine)
    unused = {k for k, g in single["grads"].items() if g is None}
    # The test means something only if some parameters are unused everywhere ("cc"'s
    # adapters, the LID head) and some on one rank ("aa"'s and "bb"'s adapters).
    assert any(".cc." in k for k in unused) and any("lid_head" in k for k in unused)
    assert not any(".aa." in k or ".bb." in k for k in unused)
    assert_close(two["grads"], single["grads"], 1e-6, f"{engine} gradient")
    assert two["norm"] == pytest.approx(single["norm"], rel=1e-5)
    assert two["plain"], f"{engine}: the model is not a plain LassModel after close()"
    assert_close(two["after_two"], single["after_two"], 2e-5, f"{engine} after 2 steps")
    assert_close(two[f"resumed {engine}"], two["after_two"], 1e-6, f"{engine} resumed")
    other = OTHER[engine]
    assert_close(two[f"resumed {other}"], two["after_two"], 2e-5, f"{engine} resumed as {other}")
    assert_close(two["after_lid"], single["after_lid"], 2e-5, f"{engine} LID step")


def test_fsdp_units_are_the_transformer_layers() -> None:
    model = LassModel(get_preset("tiny"), VOCAB, LANGUAGES)
    units = fsdp_units(model)
    assert units == list(model.encoder.transformer.layers)
    assert len(units) == get_preset("tiny").encoder_num_layers


def test_one_process_wraps_nothing() -> None:
    model, batch = make_model()
    params = ctc_params(model)
    ps = ParallelStep({"model": model}, params, lambda b, s: ctc_step(model, b, None), DistInfo())
    assert ps.engine == "local" and ps.root is None and ps.params == params


def test_fsdp_refuses_layer_drop() -> None:
    # Checked before anything is wrapped: no process group needed.
    model = LassModel(get_preset("tiny").with_dropout(0.0, layer_drop=0.1), VOCAB, LANGUAGES)
    model.eval()  # the loop switches to training only after wrapping
    with pytest.raises(ValueError, match="encoder_layer_drop"):
        ParallelStep({"model": model}, [], lambda b, s: None, DistInfo(0, 2), "fsdp")  # type: ignore[arg-type, return-value]


def test_the_engine_variable_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.train.distributed import data_parallel_engine

    monkeypatch.setenv("LASS_DATA_PARALLEL", "FSDP")
    assert data_parallel_engine() == "fsdp"
    monkeypatch.delenv("LASS_DATA_PARALLEL")
    assert data_parallel_engine() == "ddp"
    for wrong in ("zero3", "allreduce"):
        monkeypatch.setenv("LASS_DATA_PARALLEL", wrong)
        with pytest.raises(ValueError, match=f"LASS_DATA_PARALLEL='{wrong}'"):
            data_parallel_engine()
