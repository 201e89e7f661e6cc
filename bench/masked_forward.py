"""Mixed-language masked forward vs the dense forward of the same batch.

Also ``lass bench masked-forward``. Times, interleaved so that a noisy machine hurts every
mode alike: the dense model, the masked model building ``W ⊙ M`` on the fly, and the
masked model with the LRU cache of materialized weights, and with ``--compiled`` the cached
masked model with the compiled conv feature encoder (model/compiled.py, as the server runs
it on the CPU). ``--cpu-time`` times the calling thread's CPU seconds instead of wall time
(with ``--threads 1`` that is all the work): on a machine shared with other jobs it moves far
less than wall time. Then the resident memory of the packed masks for 1, 10 and 100
languages. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lass bench masked-forward", description=__doc__)
    p.add_argument("--config", default="base", help="backbone preset (tiny, base, xls-r-300m, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each utterance")
    p.add_argument("--languages", type=int, default=4, help="languages mixed in the batch")
    p.add_argument("--density", type=float, default=0.7, help="kept fraction of each mask")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per mode (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--memory-languages", default="1,10,100", help="language counts for the memory table"
    )
    p.add_argument(
        "--compiled", action="store_true", help="also time the compiled conv feature encoder"
    )
    p.add_argument(
        "--cpu-time", action="store_true", help="thread CPU seconds, not wall (use --threads 1)"
    )
    p.add_argument("--quick", action="store_true", help="tiny config, 2 repeats, short clips")
    args = p.parse_args(argv)
    if args.quick:
        args.config, args.repeats, args.seconds, args.batch = "tiny", 1, 0.5, 4
    return args


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    args = _parse(argv)
    import torch

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace) -> int:
    import torch

    from model.config import get_preset
    from model.masks import LanguageMasks
    from model.network import LassModel

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = get_preset(args.config)
    languages = [f"l{i}" for i in range(args.languages)]
    model = LassModel(config, vocab_size=64, languages=languages).eval()
    shapes = model.prunable_shapes()

    # Correlated masks, as pruning related languages gives: one shared score plus noise per
    # language; each keeps its top ``density`` fraction per tensor.
    gen = torch.Generator().manual_seed(1)
    masks = LanguageMasks(shapes)
    base_scores = {n: torch.rand(s, generator=gen) for n, s in shapes.items()}
    for lang in languages:
        keep = {}
        for n, s in shapes.items():
            score = base_scores[n] + 0.5 * torch.rand(s, generator=gen)
            threshold = torch.quantile(score.flatten()[:1_000_000], 1.0 - args.density)
            keep[n] = score > threshold
        masks.add(lang, keep)
    stats = masks.stats()
    model.to(device=device, dtype=dtype)
    model.set_masks(masks)

    samples = int(args.seconds * 16_000)
    waves = torch.randn(args.batch, samples, generator=gen).to(device, dtype)
    lang_ids = torch.arange(args.batch) % args.languages
    lang_ids = lang_ids[torch.randperm(args.batch, generator=gen)].to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def dense() -> None:
        model.set_weight_cache(None)
        model(waves)

    def on_the_fly() -> None:
        model.set_weight_cache(None)
        model(waves, lang_ids=lang_ids)

    cache_budget = (
        2 * args.languages * sum(s.numel() for s in shapes.values()) * waves.element_size()
    )
    cache_holder: dict[str, Any] = {}

    def cached() -> None:
        if "cache" not in cache_holder:
            cache_holder["cache"] = model.set_weight_cache(cache_budget)
        model._route.cache = cache_holder["cache"]
        model(waves, lang_ids=lang_ids)

    modes: dict[str, Callable[[], None]] = {
        "dense": dense,
        "masked, on the fly": on_the_fly,
        "masked, cached": cached,
    }
    lengths = torch.full((args.batch,), samples, device=device)
    if args.compiled:
        from model.compiled import CompiledFeatures

        features = CompiledFeatures(model)

        def compiled() -> None:
            if "cache" not in cache_holder:
                cache_holder["cache"] = model.set_weight_cache(cache_budget)
            model._route.cache = cache_holder["cache"]
            features.forward(waves, lengths, lang_ids)

        modes["cached, compiled conv"] = compiled
    clock = time.thread_time if args.cpu_time else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in modes}
    with torch.inference_mode():
        compile_s = 0.0
        for name, fn in modes.items():  # warm-up (fills the cache, compiles)
            start = time.perf_counter()
            fn()
            sync()
            if name == "cached, compiled conv":
                compile_s = time.perf_counter() - start
        for _ in range(args.repeats):
            for name, fn in modes.items():
                sync()
                start = clock()
                fn()
                sync()
                times[name].append(clock() - start)
    model.set_weight_cache(None)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    audio_s = args.batch * args.seconds

    print(
        f"config={args.config} device={device} dtype={args.dtype} batch={args.batch}x"
        f"{args.seconds:g}s languages={args.languages} density={args.density} "
        f"threads={torch.get_num_threads()} repeats={args.repeats} "
        f"clock={'thread CPU time' if args.cpu_time else 'wall'} "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
    )
    print(
        f"mask stats: kept_by_all={stats.kept_by_all:.3f} "
        f"mean jaccard={_mean_jaccard(stats.jaccard):.3f}"
    )
    print(f"{'mode':<22}{'median s':>10}{'audio s/s':>11}{'vs dense':>10}")
    for name, t in medians.items():
        print(f"{name:<22}{t:>10.3f}{audio_s / t:>11.1f}{medians['dense'] / t:>10.3f}")

    # Resident memory of the packed masks for several language counts (random bits: the
    # cost does not depend on the content).
    bpl = masks.bytes_per_language()
    params = sum(s.numel() for s in shapes.values())
    print(
        f"\nprunable parameters {params:,}; bytes per language {bpl:,} "
        f"(params/8 = {params / 8:,.0f})"
    )
    print(f"{'languages':>10}{'mask bytes':>16}{'RSS delta':>16}")
    memory: dict[int, dict[str, int]] = {}
    for count in [int(c) for c in args.memory_languages.split(",") if c]:
        before = _rss_bytes()
        sd = {f"m{i}": torch.randint(0, 256, (bpl,), dtype=torch.uint8) for i in range(count)}
        many = LanguageMasks.from_state_dict(sd, shapes, device=device)
        del sd
        held = sum(many.packed(lang).untyped_storage().nbytes() for lang in many.languages)
        delta = _rss_bytes() - before if device.type == "cpu" else 0
        memory[count] = {"mask_bytes": held, "rss_delta": delta}
        print(f"{count:>10}{held:>16,}{delta:>16,}")
        del many

    result = {
        "config": args.config,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": args.dtype,
        "ratio_vs_dense": round(medians["dense"] / medians["masked, on the fly"], 3),
        "ratio_vs_dense_cached": round(medians["dense"] / medians["masked, cached"], 3),
        "dense_s": round(medians["dense"], 4),
        "masked_s": round(medians["masked, on the fly"], 4),
        "cached_s": round(medians["masked, cached"], 4),
        "bytes_per_language": bpl,
        "memory": memory,
    }
    if args.compiled:
        result["compiled_s"] = round(medians["cached, compiled conv"], 4)
        result["compiled_vs_cached"] = round(
            medians["masked, cached"] / medians["cached, compiled conv"], 3
        )
        result["first_compiled_call_s"] = round(compile_s, 4)
    print(json.dumps(result))
    return 0


def _mean_jaccard(jaccard: dict[str, dict[str, float]]) -> float:
    values = [v for a, row in jaccard.items() for b, v in row.items() if a < b]
    return sum(values) / len(values) if values else 1.0


if __name__ == "__main__":
    raise SystemExit(main())
