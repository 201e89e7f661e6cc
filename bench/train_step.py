"""A masked mixed-language training step vs the dense step on the same batch.

Also ``lass bench train-step``. One step = forward, CTC loss, backward, AdamW update,
exactly as ``lass train finetune`` runs it (``model.train.finetune.ctc_step``). The
masked model runs every sample through its language's sub-network (``--languages``
languages mixed in the batch, random masks of ``--density``); the dense model is the
same weights without masks. Modes are interleaved so that a noisy machine hurts both
alike; the median of ``--repeats`` timed steps per mode is reported. Prints a table
and, last, one JSON line per config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lass bench train-step", description=__doc__)
    p.add_argument("--configs", default="tiny,base", help="backbone presets, comma-separated")
    p.add_argument("--batch", type=int, default=8, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each utterance")
    p.add_argument("--languages", type=int, default=4, help="languages mixed in the batch")
    p.add_argument("--density", type=float, default=0.7, help="kept fraction of each mask")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per mode (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode first")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as finetune.bf16)")
    p.add_argument(
        "--train-feature-encoder",
        action="store_true",
        help="also train the conv feature encoder (default: frozen, as finetune does)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny only, 2 repeats, short clips")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.repeats, args.warmup, args.seconds, args.batch = "tiny", 2, 1, 1.0, 4
    return args


def bench_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from model.config import get_preset
    from model.masks import LanguageMasks
    from model.train.config import OptimConfig
    from model.train.finetune import ctc_step
    from model.train.loop import make_optimizer

    device = torch.device(args.device)
    languages = [f"l{i}" for i in range(args.languages)]
    vocab_size = 40
    torch.manual_seed(0)
    from model.network import LassModel

    # Dropout off: both modes must do the same arithmetic apart from the masks.
    model = LassModel(get_preset(name).with_dropout(0.0), vocab_size, languages).to(device)
    if not args.train_feature_encoder:
        model.feature_extractor.requires_grad_(False)
    shapes = model.prunable_shapes()
    masks = LanguageMasks(shapes, device)
    for lang in languages:
        masks.add(lang, {n: torch.rand(s) < args.density for n, s in shapes.items()})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, OptimConfig())

    samples = int(args.seconds * 16_000)
    batch = argparse.Namespace(
        waveforms=torch.randn(args.batch, samples, device=device) * 0.1,
        lengths=torch.full((args.batch,), samples, device=device),
        lang_ids=torch.arange(args.batch, device=device) % args.languages,
        targets=torch.randint(1, vocab_size, (args.batch, int(args.seconds * 12)), device=device),
        target_lengths=torch.full((args.batch,), int(args.seconds * 12), device=device),
    )

    def step(masked: bool) -> float:
        model.set_masks(masks if masked else None)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            result = ctc_step(model, batch, None)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(False)
        step(True)
    dense, masked = [], []
    for _ in range(args.repeats):
        dense.append(step(False))
        masked.append(step(True))
    d, m = statistics.median(dense), statistics.median(masked)
    audio = args.batch * args.seconds
    return {
        "config": name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seconds": args.seconds,
        "languages": args.languages,
        "density": args.density,
        "bf16": args.bf16,
        "feature_encoder_trained": args.train_feature_encoder,
        "dense_step_s": round(d, 4),
        "masked_step_s": round(m, 4),
        "ratio_masked_vs_dense": round(m / d, 3),
        "dense_audio_s_per_s": round(audio / d, 2),
        "masked_audio_s_per_s": round(audio / m, 2),
        "repeats": args.repeats,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    args = _parse(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_config(name.strip(), args) for name in args.configs.split(",") if name]
    print(
        f"{'config':<8} {'dense s':>9} {'masked s':>9} {'ratio':>7} "
        f"{'dense a-s/s':>12} {'masked a-s/s':>13}"
    )
    for r in results:
        print(
            f"{r['config']:<8} {r['dense_step_s']:>9.3f} {r['masked_step_s']:>9.3f} "
            f"{r['ratio_masked_vs_dense']:>7.3f} {r['dense_audio_s_per_s']:>12.2f} "
            f"{r['masked_audio_s_per_s']:>13.2f}"
        )
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
