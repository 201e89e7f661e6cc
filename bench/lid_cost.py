"""What identifying the language costs, next to the ASR forward it precedes.

Also ``lass bench lid``. Loads a bundle in fp32 and times, interleaved so that a noisy
machine hurts every mode alike, on one clip: the masked ASR forward, the bundle's LID head
(``identify_language``), and the other kind of head (same shapes, fresh weights: the cost
does not depend on the weights). Prints one line per mode and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lass bench lid", description=__doc__)
    p.add_argument("--bundle", type=Path, default=Path("model/default_bundle"))
    p.add_argument("--seconds", type=float, default=5.0, help="length of the clip")
    p.add_argument("--repeats", type=int, default=30, help="timed repetitions per mode (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    args = _parse(argv)
    import torch

    from model.bundle import read_bundle
    from model.config import LID_INPUTS

    torch.set_num_threads(args.threads)
    model = read_bundle(args.bundle, dtype=torch.float32).model
    if model.lid_head is None:
        print(f"{args.bundle}: this bundle has no LID head")
        return 1
    other = copy.deepcopy(model)
    other_kind = next(k for k in LID_INPUTS if k != model.lid_input)
    other.replace_lid_head(other_kind)
    wave = torch.randn(1, int(args.seconds * 16_000), generator=torch.Generator().manual_seed(0))
    lang = torch.tensor([0])
    modes: dict[str, Callable[[], object]] = {
        "asr": lambda: model(wave, None, lang),
        f"lid_{model.lid_input}": lambda: model.identify_language(wave, None),
        f"lid_{other_kind}": lambda: other.identify_language(wave, None),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    with torch.inference_mode():
        for run in modes.values():  # first-call allocations out of the timing
            run()
        for _ in range(args.repeats):
            for name, run in modes.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {name: 1000 * statistics.median(ts) for name, ts in times.items()}
    for name, ms in medians.items():
        print(f"{name}: {ms:.1f} ms (median of {args.repeats}, {args.seconds:g} s clip)")
    print(
        json.dumps(
            {
                "bundle_lid_input": model.lid_input,
                "threads": args.threads,
                "seconds": args.seconds,
                "median_ms": medians,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
