"""Streaming benchmark: N concurrent WebSocket streams of mixed languages at real-time pace.

Starts a real ``lass serve`` per batch policy on the same bundle (the default bundle unless
``--bundle``), then for each N plays N streams at once into ``/v1/stream``, languages
round-robin over the bundle's, each stream speech with pauses (espeak-ng sentences with
1 s of silence between them) sent in 100 ms frames at real-time pace. The policies take
turns at every N, so drifting background load hits them alike. Measured per (policy, N),
on the client's clock:

- partial latency: for every 100 ms frame of speech, the time from sending it to the first
  event (partial, or the final where no partial covered it) whose audio covers it;
- final latency after the end of speech (the sentence's last sample was sent) and after the
  endpoint (the end of speech plus the silence that ends an utterance);
- CER of the joined finals and of ``POST /v1/audio/transcriptions`` on the same audio,
  against the sentences spoken.

N is held in real time when partial p95 <= 1.0 s and final p95 (after the endpoint) <= 0.5 s.
The last line printed is JSON.

    lass bench stream --streams 1,4,8,16 --policies mixed,language,none
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jiwer
import numpy as np

from bench.service import POLICIES, ServerProcess, start
from lass.client import stream_pcm
from model.train.data.espeak import Voice, synthesize
from model.train.data.text_sources import SOURCES

RATE = 16_000
PAUSE_S = 1.0
FRAME_S = 0.1
# Two sentences per language, written for this benchmark.
SENTENCES: dict[str, list[str]] = {
    "en": ["my brother reads a long book every evening", "the weather is cold and windy today"],
    "de": ["meine schwester kauft heute frisches brot", "der zug fährt morgen früh nach hamburg"],
    "es": ["mi hermano lee un libro muy largo cada noche", "el tren sale mañana por la mañana"],
    "it": [
        "mia sorella compra il pane fresco ogni mattina",
        "domani andiamo al mare con gli amici",
    ],
    "pl": [
        "mój brat czyta długą książkę każdego wieczoru",
        "jutro rano jedziemy pociągiem do domu",
    ],
    "ru": ["мой брат читает длинную книгу каждый вечер", "завтра утром мы поедем на поезде"],
    "cs": ["můj bratr čte dlouhou knihu každý večer", "zítra ráno pojedeme vlakem domů"],
    "pt": ["meu irmão lê um livro muito longo toda noite", "amanhã cedo vamos de trem para casa"],
    "fr": ["mon frère lit un long livre chaque soir", "demain matin nous prenons le train"],
    "nl": ["mijn broer leest elke avond een lang boek", "morgen vroeg nemen we de trein naar huis"],
}


@dataclass(frozen=True)
class Talk:
    """One stream's audio: sentences separated by pauses, and where speech ends."""

    language: str
    pcm: bytes  # 16 kHz s16le
    text: str
    speech: list[tuple[float, float]]  # (start, end) of each sentence, on the stream clock


def make_talk(language: str) -> Talk:
    voice = Voice(SOURCES[language].espeak_voice if language in SOURCES else language)
    silence = np.zeros(int(PAUSE_S * RATE), dtype=np.float32)
    parts, spans, t = [silence], [], PAUSE_S
    for sentence in SENTENCES[language]:
        samples = synthesize(sentence, voice)
        parts += [samples, silence]
        spans.append((t, t + len(samples) / RATE))
        t += len(samples) / RATE + PAUSE_S
    audio = np.concatenate(parts)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return Talk(language, pcm, " ".join(SENTENCES[language]), spans)


@dataclass
class StreamResult:
    partial_latency: list[float] = field(default_factory=list)
    final_after_speech: list[float] = field(default_factory=list)
    final_after_endpoint: list[float] = field(default_factory=list)
    finals: str = ""
    errors: int = 0


async def play(url: str, talk: Talk, silence_ms: int) -> StreamResult:
    arrivals: list[tuple[float, dict[str, Any]]] = []

    def on_event(event: dict[str, Any], t: float) -> None:
        arrivals.append((t, event))

    await stream_pcm(
        url,
        talk.pcm,
        {"language": talk.language, "sample_rate": RATE, "silence_ms": silence_ms},
        frame_s=FRAME_S,
        on_event=on_event,
    )
    result = StreamResult()
    covering = [(t, e) for t, e in arrivals if e["type"] in ("partial", "final")]
    finals = [(t, e) for t, e in covering if e["type"] == "final"]
    result.errors = sum(e["type"] == "error" for _, e in arrivals)
    result.finals = " ".join(e["text"] for _, e in finals)
    # Frame k (100 ms) of the stream was sent FRAME_S * k after it began; for each frame of
    # speech, the first event of its utterance whose audio reaches past it.
    for begin, end in talk.speech:
        for k in range(int(begin / FRAME_S), int(np.ceil(end / FRAME_S))):
            done = min((k + 1) * FRAME_S, end)
            first = next((t for t, e in covering if e["start"] <= done <= e["end"] + 1e-6), None)
            if first is not None:
                result.partial_latency.append(first - k * FRAME_S)
    for _, end in talk.speech:
        after = [(t, e) for t, e in finals if e["start"] <= end <= e["end"] + PAUSE_S]
        if after:
            t, _ = after[0]
            sent = np.ceil(end / FRAME_S) * FRAME_S  # the frame holding the last sample
            result.final_after_speech.append(t - sent)
            result.final_after_endpoint.append(t - sent - silence_ms / 1000)
    return result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q)), 3)


def cer(reference: str, hypothesis: str) -> float:
    return float(jiwer.cer(reference, hypothesis or "-"))


def rest_text(url: str, talk: Talk) -> str:
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        params={"language": talk.language},
        content=talk.pcm,
        headers={"Content-Type": "audio/pcm"},
        timeout=300,
    )
    response.raise_for_status()
    return str(response.json()["text"])


async def run_streams(url: str, talks: list[Talk], silence_ms: int) -> list[StreamResult]:
    return list(await asyncio.gather(*(play(url, talk, silence_ms) for talk in talks)))


def summarize(
    results: list[StreamResult], talks: list[Talk], rest: dict[str, str]
) -> dict[str, Any]:
    partial = [x for r in results for x in r.partial_latency]
    speech = [x for r in results for x in r.final_after_speech]
    endpoint = [x for r in results for x in r.final_after_endpoint]
    stream_cer = statistics.mean(cer(t.text, r.finals) for t, r in zip(talks, results, strict=True))
    rest_cer = statistics.mean(cer(t.text, rest[t.language]) for t in talks)
    summary = {
        "partial_p50": pct(partial, 50),
        "partial_p95": pct(partial, 95),
        "final_after_speech_p50": pct(speech, 50),
        "final_after_speech_p95": pct(speech, 95),
        "final_after_endpoint_p95": pct(endpoint, 95),
        "finals": sum(len(r.final_after_speech) for r in results),
        "expected_finals": sum(len(t.speech) for t in talks),
        "errors": sum(r.errors for r in results),
        "stream_cer": round(stream_cer, 4),
        "rest_cer": round(rest_cer, 4),
    }
    summary["held"] = bool(
        summary["partial_p95"] is not None
        and summary["partial_p95"] <= 1.0
        and summary["final_after_endpoint_p95"] is not None
        and summary["final_after_endpoint_p95"] <= 0.5
        and summary["finals"] == summary["expected_finals"]
        and summary["errors"] == 0
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lass bench stream", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: the default bundle)")
    parser.add_argument("--streams", default="1,4,8,16", help="concurrent streams to try")
    parser.add_argument("--policies", default="mixed,language,none")
    parser.add_argument(
        "--silence-ms", type=int, default=400, help="silence that ends an utterance"
    )
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)

    from service.settings import DEFAULT_BUNDLE

    bundle = args.bundle or DEFAULT_BUNDLE
    manifest = json.loads((bundle / "manifest.json").read_text())
    languages = [lang for lang in manifest["model"]["languages"] if lang in SENTENCES]
    if not languages:
        parser.error(f"the bundle serves none of {sorted(SENTENCES)}")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {sorted(POLICIES)}")
    counts = [int(n) for n in args.streams.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lass-bench-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    talks = {lang: make_talk(lang) for lang in languages}
    seconds = statistics.mean(len(t.pcm) / 2 / RATE for t in talks.values())
    print(f"bundle {bundle}; {len(languages)} languages; streams of {seconds:.1f} s; {counts}")
    common = {
        "LASS_MAX_WAIT_MS": str(args.max_wait_ms),
        "LASS_DEVICE": args.device,
        "LASS_MAX_STREAMS": str(max(counts) + 8),
    }
    servers: dict[str, ServerProcess] = {}
    table: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in policies}
    try:
        for policy in policies:
            servers[policy] = start(
                bundle, {**common, **POLICIES[policy]}, workdir / f"server-{policy}.log"
            )
        rest = {lang: rest_text(servers[policies[0]].url, talk) for lang, talk in talks.items()}
        for n in counts:
            chosen = [talks[languages[i % len(languages)]] for i in range(n)]
            for policy in policies:
                start_t = time.monotonic()
                results = asyncio.run(run_streams(servers[policy].url, chosen, args.silence_ms))
                summary = summarize(results, chosen, rest)
                summary["wall_s"] = round(time.monotonic() - start_t, 1)
                table[policy][n] = summary
                print(f"{policy:>9} N={n:<3} {json.dumps(summary)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    held = {
        p: max((n for n, s in rows.items() if s["held"]), default=0) for p, rows in table.items()
    }
    print(f"largest N held in real time: {held}")
    print(
        json.dumps(
            {
                "held": held,
                "policies": {p: {str(n): s for n, s in rows.items()} for p, rows in table.items()},
                "config": {
                    "bundle": str(bundle.name),
                    "languages": languages,
                    "streams": counts,
                    "silence_ms": args.silence_ms,
                    "stream_seconds": round(seconds, 2),
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
