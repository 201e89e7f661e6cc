"""One data-parallel training step under each engine of ``model.train.distributed``.

Run under torchrun, e.g. ``torchrun --standalone --nproc-per-node 2 -m bench.data_parallel``.
Every engine (``--engines``, default ``ddp,fsdp``) trains its own copy of the
same model through ``ParallelStep``, exactly as ``lass train finetune`` does: forward,
CTC loss, backward with the engine's gradient averaging, clipping, AdamW update. Each
rank takes its stride of one global batch of random audio. Engines are interleaved
step by step so that a noisy machine hurts all alike; each step starts at a barrier and
counts as long as its slowest rank. Prints the median per engine (rank 0), then one JSON
line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.data_parallel", description=__doc__)
    p.add_argument("--config", default="tiny", help="backbone preset")
    p.add_argument("--engines", default="ddp,fsdp", help="comma-separated")
    p.add_argument("--batch", type=int, default=8, help="utterances per global batch")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each utterance")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per engine (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per engine first")
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: as is)")
    p.add_argument("--train-feature-encoder", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on every rank; rank 0 prints. Returns the exit status."""
    args = _parse(argv)
    import torch
    import torch.distributed as dist

    from model.config import get_preset
    from model.network import LassModel
    from model.train.config import OptimConfig
    from model.train.distributed import ParallelStep, init_distributed, shutdown
    from model.train.finetune import ctc_step
    from model.train.loop import make_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed("cpu")
    if not info.enabled:
        raise SystemExit("run under torchrun with 2 or more processes")
    torch.manual_seed(0)
    vocab = 40
    base = LassModel(get_preset(args.config).with_dropout(0.0), vocab, ["l0"])
    if not args.train_feature_encoder:
        base.feature_extractor.requires_grad_(False)
    samples = int(args.seconds * 16_000)
    gen = torch.Generator().manual_seed(1)
    mine = slice(info.rank, None, info.world_size)
    n_targets = int(args.seconds * 12)
    batch = argparse.Namespace(
        waveforms=(torch.randn(args.batch, samples, generator=gen) * 0.1)[mine],
        lengths=torch.full((args.batch,), samples)[mine],
        lang_ids=torch.zeros(args.batch, dtype=torch.long)[mine],
        targets=torch.randint(1, vocab, (args.batch, n_targets), generator=gen)[mine],
        target_lengths=torch.full((args.batch,), n_targets)[mine],
    )
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    runs: dict[str, tuple[ParallelStep, torch.optim.Optimizer]] = {}
    for engine in engines:
        model = copy.deepcopy(base)
        params = [p for p in model.parameters() if p.requires_grad]

        def step_fn(b: Any, step: int, model: LassModel = model) -> Any:
            return ctc_step(model, b, None)

        ps = ParallelStep({"model": model}, params, step_fn, info, engine)
        runs[engine] = (ps, make_optimizer(ps.params, OptimConfig()))

    def one_step(engine: str) -> float:
        ps, optimizer = runs[engine]
        dist.barrier()
        start = time.perf_counter()
        result = ps.forward(batch, 0)
        ps.backward(result.loss.float(), result.weight)
        ps.clip_grad_norm(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        took = torch.tensor([time.perf_counter() - start])
        dist.all_reduce(took, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
        return float(took)

    for _ in range(args.warmup):
        for engine in engines:
            one_step(engine)
    times: dict[str, list[float]] = {e: [] for e in engines}
    for _ in range(args.repeats):
        for engine in engines:
            times[engine].append(one_step(engine))
    for ps, _ in runs.values():
        ps.close()
    medians = {e: statistics.median(t) for e, t in times.items()}
    if info.is_main:
        audio = args.batch * args.seconds
        first = engines[0]
        print(f"{'engine':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'vs ' + first:>9}")
        for e in engines:
            print(
                f"{e:<10} {medians[e]:>9.3f} {min(times[e]):>7.3f} {max(times[e]):>7.3f} "
                f"{medians[e] / medians[first]:>9.3f}"
            )
        print(
            json.dumps(
                {
                    "config": args.config,
                    "ranks": info.world_size,
                    "threads": torch.get_num_threads(),
                    "global_batch": args.batch,
                    "seconds": args.seconds,
                    "feature_encoder_trained": args.train_feature_encoder,
                    "repeats": args.repeats,
                    "median_step_s": {e: round(m, 4) for e, m in medians.items()},
                    "audio_s_per_s": {e: round(audio / m, 2) for e, m in medians.items()},
                    "steps_s": {e: [round(x, 4) for x in t] for e, t in times.items()},
                }
            )
        )
    shutdown(info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
