"""Service benchmark: the batch policies (auto, mixed, language, none) side by side.

Starts a real ``lass serve`` per policy on the same bundle (all at once; idle ones cost no
CPU), then offers the same load (4 s clips over N languages from concurrent closed-loop
clients) to each in turn, ``--rounds`` times in a rotating order, so drifting background
load on the machine hits every policy alike. Reports per policy: RTFx (audio seconds
transcribed per wall second), p50/p95/p99 latency, errors and the mean batch size. First
it measures the server overhead for one clip at a time on the ``none`` server: 1 - (model
forward time from the ``Server-Timing`` header) / (end-to-end latency seen by the client).

Policies: ``auto`` is the default configuration (``LASS_BATCH_MODE=auto``: the way that
ran fastest at warm-up); ``mixed``, ``language`` and ``none`` force one way; all four use
the forward ``--compile`` selects (default ``auto``: compiled on the CPU) and the
default model threads (two on a CPU). ``eager-*`` are the same ways as served before
either existed: ``LASS_COMPILE=off`` (the eager forward) and ``LASS_MODEL_THREADS=1``;
``*-1t`` are the compiled ways in one model thread (what the model threads add).
Each server's start-up time (to ready: load, compile, warm-up) is reported.

Without ``--bundle`` it writes a random-weight bundle of ``--preset`` with ``--languages``
languages (throughput does not depend on the weights' values). The last line printed is
JSON: per policy its figures, each policy's RTFx over the best of mixed/language/none
(``vs_best``) and over the best eager policy run (``vs_best_eager``), and what ``auto``
chose.

    python -m bench.service --preset base --languages 10 --seconds 60 --concurrency 16
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = ["en", "de", "es", "it", "fr", "pt", "nl", "pl", "cs", "sv", "fi", "ro"]
POLICIES: dict[str, dict[str, str]] = {
    "auto": {"LASS_BATCH_MODE": "auto"},
    "mixed": {"LASS_BATCH_MODE": "mixed"},
    "language": {"LASS_BATCH_MODE": "language"},
    "none": {"LASS_BATCH_MODE": "mixed", "LASS_MAX_BATCH_SIZE": "1"},
    # mixed without the language affinity (plain queue order among similar lengths)
    "mixed-fifo": {"LASS_BATCH_MODE": "mixed", "LASS_BATCH_LANGUAGE_AFFINITY": "false"},
}
FORCED = ("mixed", "language", "none")  # the ways auto chooses among
for _way in FORCED:
    # compiled, one model thread: what the model threads add
    POLICIES[f"{_way}-1t"] = {**POLICIES[_way], "LASS_MODEL_THREADS": "1"}
    # the baseline before issue 16: the eager forward in one model thread
    POLICIES[f"eager-{_way}"] = {**POLICIES[f"{_way}-1t"], "LASS_COMPILE": "off"}


def write_random_bundle(out: Path, preset: str, languages: list[str], seed: int = 0) -> Path:
    """A random-weight bundle with random 70 % masks (for throughput only)."""
    import torch

    from model.bundle import write_bundle
    from model.config import get_preset
    from model.masks import LanguageMasks
    from model.network import LassModel
    from model.vocab import Vocabulary

    torch.manual_seed(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    vocab = Vocabulary.build({lang: [alphabet] for lang in languages})
    model = LassModel(get_preset(preset), len(vocab), languages).eval()
    shapes = model.prunable_shapes()
    masks = LanguageMasks(shapes)
    gen = torch.Generator().manual_seed(seed + 1)
    for lang in languages:
        masks.add(lang, {n: torch.rand(s, generator=gen) < 0.7 for n, s in shapes.items()})
    return write_bundle(out, model, vocab, masks, provenance={"name": f"bench-{preset}"})


def make_clip(seconds: float, seed: int) -> bytes:
    """A WAV of amplitude-modulated noise and tones: speech-like energy, deterministic."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    signal_ = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.1 * rng.standard_normal(
        t.size
    )
    pcm = (np.clip(envelope * signal_, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    startup_s: float = 0.0  # launch to ready: load, compile, warm-up
    ready: dict[str, Any] = field(default_factory=dict)  # the /health/ready body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(bundle: Path, env: dict[str, str], log_path: Path) -> ServerProcess:
    port = free_port()
    full = {
        **os.environ,
        "LASS_BUNDLE": str(bundle),
        "LASS_HOST": "127.0.0.1",
        "LASS_PORT": str(port),
        "LASS_LOG_LEVEL": "warning",
        **env,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lass", "serve"], cwd=REPO, env=full, stdout=log, stderr=log
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", proc)
    launched = time.monotonic()
    deadline = launched + 1800  # compiling on a busy 2-core machine takes minutes
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            response = httpx.get(server.url + "/health/ready", timeout=2)
            if response.status_code == 200:
                server.startup_s = time.monotonic() - launched
                server.ready = response.json()
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError("server did not become ready")


@dataclass
class LoadResult:
    policy: str
    wall_s: float
    audio_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return float(np.percentile(self.latencies, q))

    def merge(self, other: LoadResult) -> LoadResult:
        return LoadResult(
            self.policy,
            self.wall_s + other.wall_s,
            self.audio_s + other.audio_s,
            self.latencies + other.latencies,
            self.errors + other.errors,
            self.batch_sizes + other.batch_sizes,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "rtfx": round(self.rtfx, 3),
            "requests": len(self.latencies),
            "errors": self.errors,
            "p50_ms": round(self.pct(50) * 1000, 1),
            "p95_ms": round(self.pct(95) * 1000, 1),
            "p99_ms": round(self.pct(99) * 1000, 1),
            "mean_batch": round(statistics.fmean(self.batch_sizes), 2) if self.batch_sizes else 0,
        }


def post(client: httpx.Client, url: str, clip: bytes, language: str) -> httpx.Response:
    return client.post(
        url + "/v1/audio/transcriptions",
        files={"file": ("clip.wav", clip, "audio/wav")},
        data={"language": language},
    )


def offer_load(
    server: ServerProcess,
    policy: str,
    clips: list[tuple[str, bytes]],
    clip_seconds: float,
    concurrency: int,
    seconds: float,
) -> LoadResult:
    """``concurrency`` closed-loop clients for ``seconds``; requests still running at the end
    are waited for and counted."""
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    result = LoadResult(policy, seconds)

    def client_loop(index: int) -> None:
        with httpx.Client(timeout=300) as client:
            k = index
            while time.monotonic() < stop_at:
                language, clip = clips[k % len(clips)]
                k += concurrency
                t0 = time.perf_counter()
                try:
                    response = post(client, server.url, clip, language)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok, response = False, None
                elapsed = time.perf_counter() - t0
                with lock:
                    if ok and response is not None:
                        result.latencies.append(elapsed)
                        result.audio_s += clip_seconds
                        size = re.search(r"size=(\d+)", response.headers.get("x-lass-batches", ""))
                        if size:
                            result.batch_sizes.append(int(size.group(1)))
                    else:
                        result.errors += 1

    start_t = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.monotonic() - start_t
    return result


def measure_overhead(
    server: ServerProcess, clips: list[tuple[str, bytes]], n: int
) -> dict[str, float]:
    """One request at a time: end-to-end latency vs the model forward inside the server."""
    e2e: list[float] = []
    inference: list[float] = []
    with httpx.Client(timeout=300) as client:
        for i in range(n):
            language, clip = clips[i % len(clips)]
            t0 = time.perf_counter()
            response = post(client, server.url, clip, language)
            e2e.append(time.perf_counter() - t0)
            response.raise_for_status()
            timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
            inference.append(float(timing["inference"]) / 1000)
    e2e_med, inf_med = statistics.median(e2e), statistics.median(inference)
    return {
        "e2e_ms": round(e2e_med * 1000, 1),
        "inference_ms": round(inf_med * 1000, 1),
        "overhead": round(1 - inf_med / e2e_med, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lass bench service", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="serve this bundle instead of a random one")
    parser.add_argument("--preset", default="base", help="backbone preset of the random bundle")
    parser.add_argument("--languages", type=int, default=10, help="languages in the load")
    parser.add_argument("--clip-seconds", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="load time per policy")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument(
        "--policies",
        default="auto,mixed,language,none",
        help=f"comma-separated, of {', '.join(POLICIES)}",
    )
    parser.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="LASS_COMPILE of the servers (eager-* policies: always off)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="policies take turns this often")
    parser.add_argument("--overhead-requests", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--workdir", type=Path, help="where the random bundle and logs go")
    args = parser.parse_args(argv)

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {sorted(POLICIES)}")
    if not 1 <= args.languages <= len(LANGUAGES):
        parser.error(f"--languages must be 1..{len(LANGUAGES)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lass-bench-service-"))
    workdir.mkdir(parents=True, exist_ok=True)
    languages = LANGUAGES[: args.languages]
    bundle = args.bundle
    if bundle is None:
        bundle = workdir / f"bundle-{args.preset}-{args.languages}"
        if not (bundle / "manifest.json").is_file():
            print(f"writing a random {args.preset} bundle with {len(languages)} languages ...")
            write_random_bundle(bundle, args.preset, languages)
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        languages = manifest["model"]["languages"][: args.languages]
    clips = [(lang, make_clip(args.clip_seconds, seed=i)) for i, lang in enumerate(languages)]
    common = {
        "LASS_MAX_BATCH_SIZE": str(args.max_batch_size),
        "LASS_MAX_WAIT_MS": str(args.max_wait_ms),
        "LASS_MAX_QUEUE_SIZE": str(max(256, 4 * args.concurrency)),
        "LASS_DEVICE": args.device,
        "LASS_DTYPE": args.dtype,
        "LASS_COMPILE": args.compile,
    }
    print(
        f"bundle {bundle}; {len(languages)} languages; {args.clip_seconds} s clips; "
        f"{args.concurrency} clients; {args.seconds} s per policy"
    )
    results: dict[str, LoadResult] = {}
    overhead: dict[str, float] | None = None
    servers: dict[str, ServerProcess] = {}
    try:
        # All servers up at once (idle ones cost no CPU); the load then visits them in
        # rounds, so a change in background load on the machine hits every policy alike.
        for policy in policies:
            env = {**common, **POLICIES[policy]}
            servers[policy] = start(bundle, env, workdir / f"server-{policy}.log")
            print(
                f"{policy} ready in {servers[policy].startup_s:.1f} s: "
                f"{servers[policy].ready.get('batch_policy')}"
            )
            with httpx.Client(timeout=300) as client:  # warm every code path once
                for language, clip in clips:
                    post(client, servers[policy].url, clip, language).raise_for_status()
        if "none" in servers:
            overhead = measure_overhead(servers["none"], clips, args.overhead_requests)
            print(f"overhead (one request at a time): {overhead}")
        for round_ in range(args.rounds):
            # The order rotates each round: no policy always runs first or after the same
            # one (the first slot of a round measured a few % low on a quiet machine).
            shift = round_ % len(policies)
            for policy in policies[shift:] + policies[:shift]:
                part = offer_load(
                    servers[policy],
                    policy,
                    clips,
                    args.clip_seconds,
                    args.concurrency,
                    args.seconds / args.rounds,
                )
                print(f"round {round_ + 1} {policy:>14}: {part.summary()}")
                results[policy] = results[policy].merge(part) if policy in results else part
    finally:
        for server in servers.values():
            server.stop()
    for policy, result in results.items():
        print(f"{policy:>14}: {result.summary()}")

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results and results[b].rtfx > 0:
            return round(results[a].rtfx / results[b].rtfx, 3)
        return None

    def vs_best(names: list[str]) -> dict[str, float] | None:
        best = max((results[n].rtfx for n in names if n in results), default=0.0)
        if best <= 0:
            return None
        return {p: round(r.rtfx / best, 3) for p, r in results.items()}

    summary = {
        "policies": {
            p: {**r.summary(), "startup_s": round(servers[p].startup_s, 1)}
            for p, r in results.items()
        },
        "vs_best": vs_best(list(FORCED)),
        "vs_best_eager": vs_best([f"eager-{w}" for w in FORCED]),
        "auto_chose": servers["auto"].ready.get("batch_policy") if "auto" in servers else None,
        "mixed_vs_none": ratio("mixed", "none"),
        "mixed_vs_language": ratio("mixed", "language"),
        "overhead": overhead,
        "config": {
            "preset": args.preset if args.bundle is None else str(args.bundle),
            "languages": len(languages),
            "clip_seconds": args.clip_seconds,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "compile": args.compile,
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
