"""Reliability under load (issue 14): capacity, overload, soak and slow clients.

    python -m bench.reliability capacity                      # closed loop: requests/s
    python -m bench.reliability overload --factor 3 --seconds 60
    python -m bench.reliability soak --fraction 0.7 --seconds 600
    python -m bench.reliability slowloris --connections 200 --seconds 60
    python -m bench.reliability fairness --long-seconds 600
    python -m bench.reliability silence --silence-seconds 1790
    python -m bench.reliability faults --server-env LASS_FAULTS=forward:de,decode:es,oom:2

Each starts its own ``lass serve`` on the default bundle (``--server-env K=V`` for its
settings; ``LASS_COMPILE=off`` unless given, compiling takes minutes on a CPU) or loads
``--url``. Requests are espeak-ng sentences (2-4 s) in en, de, es, fr, it, as multipart
uploads with a language. The last line printed is JSON; docs/reliability.md has the figures.

- ``capacity``: ``--concurrency`` clients in a closed loop for ``--seconds``; completed
  requests per second. ``overload`` and ``soak`` measure it first unless ``--capacity``.
- ``overload``: open-loop arrivals at ``--factor`` x capacity for ``--seconds`` (each client
  waits up to 300 s, so nothing is counted lost because the client gave up): every
  request's status, latencies of the answered ones, ``Retry-After`` on 503/429, requests
  with no HTTP answer (lost), 5xx other than 503; then recovery: from the end of the
  offered load, when a probe request is first answered 200 within 2x the idle latency.
- ``soak``: open loop at ``--fraction`` x capacity for ``--seconds``; the server's RSS
  (``process_resident_memory_bytes``) every 10 s, its growth from the end of the first
  minute to the end, and latency per minute.
- ``slowloris``: the latency of sequential normal requests before, during and after
  ``--connections`` clients that send a request line and then one header byte a second
  (reconnecting when cut), with the server's open descriptors and rejection counters.
- ``fairness``: one request of ``--long-seconds`` of speech (the clips over and over), and
  while it runs, ``--requests`` short clips one after another: their latency against the
  idle latency, and the long request's own time.
- ``silence``: ``--silence-seconds`` of silence between two clips, as FLAC (tiny): its
  time and the server's ``lass_silence_skipped_seconds_total``.
- ``faults``: ``--requests`` rounds of one concurrent request per language against a
  server started with ``LASS_FAULTS`` (service/faults.py): statuses per language and the
  server's ``lass_engine_faults_total`` by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import soundfile as sf

URL_PATH = "/v1/audio/transcriptions"
SENTENCES = {
    "en": "the weather is nice today and we are going for a walk",
    "de": "das wetter ist heute schön und wir gehen spazieren",
    "es": "hoy hace buen tiempo y vamos a dar un paseo",
    "fr": "il fait beau aujourd'hui et nous allons nous promener",
    "it": "oggi il tempo è bello e andiamo a fare una passeggiata",
}
CLIENT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Clip:
    language: str
    wav: bytes
    seconds: float


def make_clips() -> list[Clip]:
    from model.train.data.espeak import SAMPLE_RATE, Voice, synthesize

    clips = []
    for lang, text in SENTENCES.items():
        samples = synthesize(text, Voice(lang))
        buf = io.BytesIO()
        sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        clips.append(Clip(lang, buf.getvalue(), len(samples) / SAMPLE_RATE))
    return clips


# ---------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(url: str | None, env: Sequence[str]) -> Any:
    """Yield the base URL of ``url`` or of a local ``lass serve`` started (and stopped) here."""
    if url:
        yield url.rstrip("/")
        return
    port = free_port()
    settings = {"LASS_COMPILE": "off", **dict(item.split("=", 1) for item in env)}
    full = {**os.environ, "LASS_HOST": "127.0.0.1", "LASS_PORT": str(port), **settings}
    log = Path(tempfile.mkstemp(prefix="lass-reliability-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lass", "serve"], env=full, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"lass serve exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"lass serve not ready in 600 s; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        print(f"server {base} ready (log {log})", file=sys.stderr)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scrape(base: str, names: Sequence[str]) -> dict[str, float]:
    """Sums of the /metrics samples whose line starts with each name (labels included)."""
    text = httpx.get(base + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[-1])
    return out


# ---------------------------------------------------------------------------- requests


@dataclass
class Outcome:
    sent_at: float  # seconds from the start of the run
    latency_s: float
    status: int | None  # None: no HTTP answer
    retry_after: str | None = None
    error: str | None = None


async def one_request(client: httpx.AsyncClient, base: str, clip: Clip, t0: float) -> Outcome:
    start = time.monotonic()
    try:
        response = await client.post(
            base + URL_PATH,
            files={"file": ("a.wav", clip.wav, "audio/wav")},
            data={"language": clip.language},
            timeout=CLIENT_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return Outcome(start - t0, time.monotonic() - start, None, error=type(exc).__name__)
    return Outcome(
        start - t0,
        time.monotonic() - start,
        response.status_code,
        response.headers.get("retry-after"),
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else f"lost:{o.error}"
        statuses[key] = statuses.get(key, 0) + 1
    ok = [o.latency_s for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status in (429, 503)]
    return {
        "requests": len(outcomes),
        "statuses": dict(sorted(statuses.items())),
        "answered_200": len(ok),
        "lost": sum(1 for o in outcomes if o.status is None),
        "server_errors_not_503": sum(
            1 for o in outcomes if o.status is not None and o.status >= 500 and o.status != 503
        ),
        "shed": len(shed),
        "shed_without_retry_after": sum(1 for o in shed if not o.retry_after),
        "p50_s": _round(percentile(ok, 0.5)),
        "p95_s": _round(percentile(ok, 0.95)),
        "p99_s": _round(percentile(ok, 0.99)),
        "max_s": _round(max(ok, default=None)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def closed_loop(base: str, clips: Sequence[Clip], concurrency: int, seconds: float) -> float:
    """Completed (200) requests per second with ``concurrency`` clients in a closed loop."""
    done = 0
    t0 = time.monotonic()
    end = t0 + seconds
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency + 4)) as client:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                outcome = await one_request(client, base, random.choice(clips), t0)
                if outcome.status == 200 and time.monotonic() <= end:
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


async def open_loop(
    base: str, clips: Sequence[Clip], rate: float, seconds: float, t0: float
) -> list[Outcome]:
    """Requests at a constant ``rate`` per second for ``seconds``, whatever the answers."""
    tasks: list[asyncio.Task[Outcome]] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        n = int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one_request(client, base, random.choice(clips), t0)))
        return list(await asyncio.gather(*tasks))


async def idle_latency(base: str, clips: Sequence[Clip], n: int = 10) -> float:
    async with httpx.AsyncClient() as client:
        t0 = time.monotonic()
        latencies = [(await one_request(client, base, clips[i % len(clips)], t0)) for i in range(n)]
    return statistics.median(o.latency_s for o in latencies if o.status == 200)


def concatenated(clips: Sequence[Clip], seconds: float, gap_s: float = 0.5) -> Clip:
    """The clips one after another, ``gap_s`` of silence between, up to ``seconds``: long
    speech with pauses, as a 16-bit WAV (``language`` is the first clip's: the model is
    asked for one language, which is what a long upload does)."""
    import numpy as np

    rate = 16_000
    parts: list[Any] = []
    total = 0
    gap = np.zeros(int(gap_s * rate), dtype=np.float32)
    clip = clips[0]
    audio, _ = sf.read(io.BytesIO(clip.wav), dtype="float32")
    while total < seconds * rate:
        parts += [audio, gap]
        total += len(audio) + len(gap)
    samples = np.concatenate(parts)[: int(seconds * rate)]
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return Clip(clip.language, buf.getvalue(), len(samples) / rate)


# ---------------------------------------------------------------------------- commands


async def capacity(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> float:
    await closed_loop(base, clips, args.concurrency, 5.0)  # warm the batcher and caches
    return await closed_loop(base, clips, args.concurrency, args.capacity_seconds)


async def overload(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> dict[str, Any]:
    idle = await idle_latency(base, clips)
    cap = args.capacity or await capacity(args, base, clips)
    rate = args.factor * cap
    before = scrape(base, ["lass_requests_total", "lass_rejected_requests_total"])
    t0 = time.monotonic()
    load = asyncio.create_task(open_loop(base, clips, rate, args.seconds, t0))
    # Recovery probes: from the end of the offered load, one request at a time.
    await asyncio.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
    recovered_after: float | None = None
    async with httpx.AsyncClient() as client:
        while recovered_after is None and time.monotonic() - t0 < args.seconds + 600:
            probe = await one_request(client, base, clips[0], t0)
            if probe.status == 200 and probe.latency_s <= 2 * idle:
                recovered_after = time.monotonic() - (t0 + args.seconds)
            else:
                await asyncio.sleep(0.5)
    outcomes = await load
    last_answer = max(o.sent_at + o.latency_s for o in outcomes)
    return {
        "idle_latency_s": round(idle, 3),
        "capacity_rps": round(cap, 3),
        "offered_rps": round(rate, 3),
        "seconds": args.seconds,
        **summarize(outcomes),
        "accepted_answered_within_s_of_load_end": round(last_answer - args.seconds, 1),
        "recovered_after_s": _round(recovered_after),
        "server_rejected": _delta(
            before, scrape(base, ["lass_requests_total", "lass_rejected_requests_total"])
        ),
    }


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


async def soak(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> dict[str, Any]:
    cap = args.capacity or await capacity(args, base, clips)
    rate = args.fraction * cap
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()

    async def sample() -> None:
        while True:
            value = await asyncio.to_thread(scrape, base, ["process_resident_memory_bytes"])
            rss.append((time.monotonic() - t0, value["process_resident_memory_bytes"]))
            await asyncio.sleep(10)

    sampler = asyncio.create_task(sample())
    outcomes = await open_loop(base, clips, rate, args.seconds, t0)
    sampler.cancel()
    after_warmup = next((v for t, v in rss if t >= 60), rss[0][1])
    end = rss[-1][1]
    minutes = []
    for m in range(int(args.seconds // 60) + 1):
        window = [o for o in outcomes if m * 60 <= o.sent_at < (m + 1) * 60]
        if window:
            s = summarize(window)
            minutes.append(
                {
                    "minute": m,
                    "requests": s["requests"],
                    "p50_s": s["p50_s"],
                    "p99_s": s["p99_s"],
                    "not_200": s["requests"] - s["answered_200"],
                }
            )
    return {
        "capacity_rps": round(cap, 3),
        "offered_rps": round(rate, 3),
        "seconds": args.seconds,
        **summarize(outcomes),
        "rss_mb_start": round(rss[0][1] / 2**20, 1),
        "rss_mb_after_first_minute": round(after_warmup / 2**20, 1),
        "rss_mb_end": round(end / 2**20, 1),
        "rss_mb_max": round(max(v for _, v in rss) / 2**20, 1),
        "rss_growth_after_first_minute": round(end / after_warmup - 1, 4),
        "per_minute": minutes,
    }


async def trickle(host: str, port: int, stop: asyncio.Event, cut: list[int]) -> None:
    """A request line, then a header byte a second; reconnect a second after being cut."""
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"POST {URL_PATH} HTTP/1.1\r\n".encode())
            while not stop.is_set():
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if not await asyncio.wait_for(reader.read(1024), timeout=1.0):
                        break  # closed by the server
                    break  # an answer (408): the server is done with it
                writer.write(b"X")
            cut[0] += 1
        except OSError:
            cut[0] += 1
        finally:
            if writer is not None:
                writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def slowloris(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    names = ["process_open_fds", "lass_rejected_requests_total"]

    async def phase(n: int) -> dict[str, Any]:
        outcomes = []
        async with httpx.AsyncClient() as client:
            t0 = time.monotonic()
            for i in range(n):
                # a new connection each time, as a new client would open
                client.headers["Connection"] = "close"
                outcomes.append(await one_request(client, base, clips[i % len(clips)], t0))
        return summarize(outcomes)

    before = await phase(args.requests)
    metrics_before = await asyncio.to_thread(scrape, base, names)
    stop = asyncio.Event()
    cut = [0]
    tasks = [
        asyncio.create_task(trickle(host, int(port), stop, cut)) for _ in range(args.connections)
    ]
    await asyncio.sleep(3)
    t0 = time.monotonic()
    during = await phase(args.requests)
    fds_peak = (await asyncio.to_thread(scrape, base, names))["process_open_fds"]
    while time.monotonic() - t0 < args.seconds:  # hold the crowd for the whole period
        await asyncio.sleep(1)
        fds_peak = max(fds_peak, (await asyncio.to_thread(scrape, base, names))["process_open_fds"])
    metrics_during = await asyncio.to_thread(scrape, base, names)
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(2)
    after = await phase(args.requests)
    return {
        "connections": args.connections,
        "seconds": args.seconds,
        "before": before,
        "during": during,
        "after": after,
        "slow_connections_cut_or_refused": cut[0],
        "open_fds_before": metrics_before["process_open_fds"],
        "open_fds_peak_during": fds_peak,
        "rejected_during": metrics_during["lass_rejected_requests_total"]
        - metrics_before.get("lass_rejected_requests_total", 0.0),
    }


async def fairness(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> dict[str, Any]:
    idle = await idle_latency(base, clips)
    long = concatenated(clips, args.long_seconds)
    t0 = time.monotonic()
    async with httpx.AsyncClient() as client:
        long_task = asyncio.create_task(one_request(client, base, long, t0))
        await asyncio.sleep(1.0)
        short: list[Outcome] = []
        for i in range(args.requests):
            if long_task.done():
                break
            short.append(await one_request(client, base, clips[i % len(clips)], t0))
        long_outcome = await long_task
    during = [o.latency_s for o in short if o.status == 200]
    return {
        "idle_latency_s": round(idle, 3),
        "long_request_s": args.long_seconds,
        "long_status": long_outcome.status,
        "long_latency_s": round(long_outcome.latency_s, 2),
        "short_requests_during": len(short),
        "short_statuses": summarize(short)["statuses"],
        "short_median_s": _round(statistics.median(during) if during else None),
        "short_max_s": _round(max(during, default=None)),
    }


async def silence(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> dict[str, Any]:
    import numpy as np

    rate = 16_000
    speech, _ = sf.read(io.BytesIO(clips[0].wav), dtype="float32")
    quiet = np.zeros(int(args.silence_seconds * rate), dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([speech, quiet, speech]), rate, format="FLAC")
    upload = Clip(clips[0].language, buf.getvalue(), len(quiet) / rate + 2 * clips[0].seconds)
    before = scrape(base, ["lass_silence_skipped_seconds_total"])
    async with httpx.AsyncClient() as client:
        start = time.monotonic()
        response = await client.post(
            base + URL_PATH,
            files={"file": ("a.flac", upload.wav, "audio/flac")},
            data={"language": upload.language},
            timeout=CLIENT_TIMEOUT_S,
        )
        took = time.monotonic() - start
    after = scrape(base, ["lass_silence_skipped_seconds_total"])
    return {
        "upload_bytes": len(upload.wav),
        "audio_s": round(upload.seconds, 1),
        "status": response.status_code,
        "latency_s": round(took, 2),
        "skipped_s": round(_delta(before, after).get("lass_silence_skipped_seconds_total", 0), 1),
        "text": response.json().get("text") if response.status_code == 200 else response.text,
    }


async def faults(args: argparse.Namespace, base: str, clips: Sequence[Clip]) -> dict[str, Any]:
    statuses: dict[str, dict[str, int]] = {c.language: {} for c in clips}
    codes: dict[str, int] = {}
    names = ["lass_engine_faults_total", "lass_requests_total"]
    before = scrape(base, names)
    async with httpx.AsyncClient() as client:
        for _ in range(args.requests):
            t0 = time.monotonic()
            outcomes = await asyncio.gather(*(one_request(client, base, c, t0) for c in clips))
            for clip, o in zip(clips, outcomes, strict=True):
                key = str(o.status) if o.status is not None else f"lost:{o.error}"
                statuses[clip.language][key] = statuses[clip.language].get(key, 0) + 1
    text = httpx.get(base + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("lass_engine_faults_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            codes[kind] = int(float(line.rsplit(" ", 1)[-1]))
    return {
        "rounds": args.requests,
        "statuses_by_language": statuses,
        "engine_faults": codes,
        "metrics_delta": _delta(before, scrape(base, names)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        choices=["capacity", "overload", "soak", "slowloris", "fairness", "silence", "faults"],
    )
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--server-env", action="append", default=[], help="K=V")
    parser.add_argument("--concurrency", type=int, default=16, help="capacity's clients")
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--capacity", type=float, help="requests/s, instead of measuring")
    parser.add_argument("--factor", type=float, default=3.0, help="overload: x capacity")
    parser.add_argument("--fraction", type=float, default=0.7, help="soak: x capacity")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=200, help="slowloris clients")
    parser.add_argument("--requests", type=int, default=20, help="slowloris: per phase")
    parser.add_argument("--long-seconds", type=float, default=600.0, help="fairness")
    parser.add_argument("--silence-seconds", type=float, default=1790.0, help="silence")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    clips = make_clips()
    with server(args.url, args.server_env) as base:
        if args.command == "capacity":
            result: dict[str, Any] = {
                "capacity_rps": round(asyncio.run(capacity(args, base, clips)), 3),
                "concurrency": args.concurrency,
                "clip_seconds": [round(c.seconds, 2) for c in clips],
            }
        elif args.command == "overload":
            result = asyncio.run(overload(args, base, clips))
        elif args.command == "soak":
            result = asyncio.run(soak(args, base, clips))
        elif args.command == "fairness":
            result = asyncio.run(fairness(args, base, clips))
        elif args.command == "silence":
            result = asyncio.run(silence(args, base, clips))
        elif args.command == "faults":
            result = asyncio.run(faults(args, base, clips))
        else:
            result = asyncio.run(slowloris(args, base, clips))
    result["command"] = " ".join(["python -m bench.reliability", *(argv or sys.argv[1:])])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
