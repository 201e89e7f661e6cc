"""Rate limits per key and per client address, against a real ``lass serve``: 429 with
Retry-After in OpenAI's shape (the official client's RateLimitError), the audio-seconds
budget, streams per key, one key's burst leaving another's latency alone, the rejection
metrics; and the token buckets themselves on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets

from lass.client import read_pcm16
from service.ratelimit import RateLimiter, TokenBuckets
from tests.conftest import Server, Utterance, stop_server
from tests.service.conftest import serve

KEYS = {name: f"key-{name}-{name * 12}" for name in "abcdefg"}
RPM = 4  # requests per minute: 4 at once, then one every 15 s
AUDIO_PER_MINUTE = 3.0
START = json.dumps({"type": "start", "language": "en"})


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Server]:
    srv = serve(
        tmp_path_factory.mktemp("limited"),
        tiny_bundle,
        LASS_API_KEYS=",".join(KEYS.values()),
        LASS_RATE_LIMIT_REQUESTS_PER_MINUTE=str(RPM),
        LASS_RATE_LIMIT_AUDIO_SECONDS_PER_MINUTE=str(AUDIO_PER_MINUTE),
        LASS_MAX_STREAMS_PER_KEY="1",
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Server]:
    """Keys off: limits apply per client address; no LASS_CORS_ORIGINS."""
    srv = serve(
        tmp_path_factory.mktemp("anonymous"), tiny_bundle, LASS_RATE_LIMIT_REQUESTS_PER_MINUTE="3"
    )
    yield srv
    stop_server(srv)


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def metric(server: Server, name: str, **labels: str) -> float:
    body = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.split("{", 1)[0] == name and want in line
    )


def transcribe(server: Server, key: str, pcm: bytes) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = httpx.post(
        f"{server.base_url}/v1/audio/transcriptions",
        params={"language": "en"},
        content=pcm,
        headers={"Content-Type": "audio/pcm", **auth(key)},
        timeout=60,
    )
    return response, time.perf_counter() - start


def assert_rate_limited(response: httpx.Response, kind: str, longest: float) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded" and error["type"] == kind
    assert 1 <= int(response.headers["retry-after"]) <= longest


def test_requests_over_the_limit_get_429_with_retry_after(limited: Server) -> None:
    before = metric(limited, "lass_rejected_requests_total", reason="rate_limit_requests")
    url = f"{limited.base_url}/v1/models"
    statuses = [httpx.get(url, headers=auth("a"), timeout=10).status_code for _ in range(RPM)]
    assert statuses == [200] * RPM
    refused = httpx.get(url, headers=auth("a"), timeout=10)
    assert_rate_limited(refused, "requests", longest=60 / RPM)
    client = openai.OpenAI(base_url=f"{limited.base_url}/v1", api_key=KEYS["a"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    assert caught.value.code == "rate_limit_exceeded"
    after = metric(limited, "lass_rejected_requests_total", reason="rate_limit_requests")
    assert after - before == 2
    # Health checks and the page are not counted against anyone.
    for path in ("/health/ready", "/", "/metrics"):
        assert httpx.get(limited.base_url + path, timeout=10).status_code == 200


def test_one_keys_burst_leaves_another_keys_requests_alone(
    limited: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = read_pcm16(speech["en"][0].path)[:16_000]  # 0.5 s of s16le: well under the limits
    response, baseline = transcribe(limited, "b", pcm)
    assert response.status_code == 200
    with ThreadPoolExecutor(16) as pool:
        burst = [pool.submit(transcribe, limited, "c", pcm) for _ in range(16)]
        time.sleep(0.05)
        during = [transcribe(limited, "b", pcm) for _ in range(2)]
        statuses = [f.result()[0].status_code for f in burst]
    assert all(r.status_code == 200 for r, _ in during), [r.text for r, _ in during]
    slowest = max(seconds for _, seconds in during)
    assert slowest < 3 * baseline + 1.0, (baseline, slowest)
    # Key c got its burst (and perhaps one refilled token), nothing more.
    assert RPM <= statuses.count(200) <= RPM + 1 and statuses.count(429) >= 16 - RPM - 1


def test_audio_seconds_are_counted_after_decoding(
    limited: Server, speech: dict[str, list[Utterance]]
) -> None:
    before = metric(limited, "lass_rejected_requests_total", reason="rate_limit_audio")
    pcm = read_pcm16(speech["en"][0].path)
    seconds = len(pcm) / 2 / 16_000
    accepted = 0
    while True:
        response, _ = transcribe(limited, "d", pcm)
        if response.status_code != 200:
            break
        accepted += 1
    # A full bucket takes any one file, so at least one passed; then only what fits.
    assert 1 <= accepted <= max(1, int(AUDIO_PER_MINUTE // seconds)), (accepted, seconds)
    assert_rate_limited(response, "audio_seconds", longest=60)
    assert "seconds of audio per minute" in response.json()["error"]["message"]
    after = metric(limited, "lass_rejected_requests_total", reason="rate_limit_audio")
    assert after - before == 1
    # The request bucket is separate: key d can still list models.
    models = httpx.get(f"{limited.base_url}/v1/models", headers=auth("d"), timeout=10)
    assert models.status_code == 200


def test_streams_per_key_are_limited_and_freed_on_close(limited: Server) -> None:
    url = limited.base_url.replace("http://", "ws://") + "/v1/stream"

    async def started(key: str) -> Any:
        ws = await websockets.connect(url, additional_headers=auth(key))
        # A refusal comes at once, and the close may beat our start message.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(START)
        return ws, json.loads(await ws.recv())

    async def run() -> None:
        held, first = await started("e")
        assert first["type"] == "started"
        second, refusal = await started("e")
        assert refusal["type"] == "error" and refusal["error"]["code"] == "rate_limit_exceeded"
        with pytest.raises(websockets.ConnectionClosed):
            await second.recv()
        assert second.close_code == 1013
        other, event = await started("f")  # another key meanwhile
        assert event["type"] == "started"
        await held.close()
        await other.close()
        await asyncio.sleep(0.3)
        again, event = await started("e")
        assert event["type"] == "started"
        await again.close()

    before = metric(limited, "lass_rejected_requests_total", reason="rate_limit_streams")
    asyncio.run(run())
    assert (
        metric(limited, "lass_rejected_requests_total", reason="rate_limit_streams") == before + 1
    )
    closes = metric(limited, "lass_stream_closes_total", reason="rate_limit_streams")
    assert closes >= 1
    body = httpx.get(f"{limited.base_url}/metrics", timeout=10).text
    for key in KEYS.values():
        assert key not in body


def test_streamed_audio_is_charged_to_the_keys_audio_allowance(
    limited: Server, speech: dict[str, list[Utterance]]
) -> None:
    url = limited.base_url.replace("http://", "ws://") + "/v1/stream"
    pcm = read_pcm16(speech["en"][0].path) * 4  # more seconds than the allowance holds
    assert len(pcm) / 2 / 16_000 > AUDIO_PER_MINUTE + 1

    async def run() -> tuple[list[dict[str, Any]], int | None]:
        events: list[dict[str, Any]] = []
        async with websockets.connect(url, additional_headers=auth("g")) as ws:
            await ws.send(START)
            events.append(json.loads(await ws.recv()))
            with contextlib.suppress(websockets.ConnectionClosed):
                for i in range(0, len(pcm), 3200):  # 0.1 s frames, as fast as it takes them
                    await ws.send(pcm[i : i + 3200])
                await ws.send(json.dumps({"type": "stop"}))
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    events.append(json.loads(await ws.recv()))
            return events, ws.close_code

    before = metric(limited, "lass_rejected_requests_total", reason="rate_limit_audio")
    events, code = asyncio.run(run())
    assert events[0]["type"] == "started"
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[-1]["error"]["code"] == "rate_limit_exceeded", events
    assert "streams and uploads together" in errors[-1]["error"]["message"]
    assert code == 1013
    after = metric(limited, "lass_rejected_requests_total", reason="rate_limit_audio")
    assert after - before == 1
    # The same bucket as uploads: key g's next upload is refused too.
    response, _ = transcribe(limited, "g", read_pcm16(speech["en"][0].path))
    assert_rate_limited(response, "audio_seconds", longest=60)


def test_with_keys_off_limits_apply_per_client_address(anonymous: Server) -> None:
    url = f"{anonymous.base_url}/v1/models"
    assert [httpx.get(url, timeout=10).status_code for _ in range(4)] == [200, 200, 200, 429]
    # The same server from another loopback address: a bucket of its own.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10) as other:
        assert other.get(url).status_code == 200


def test_cors_is_closed_by_default(anonymous: Server) -> None:
    preflight = httpx.options(
        f"{anonymous.base_url}/v1/audio/transcriptions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in preflight.headers
    page = httpx.get(f"{anonymous.base_url}/", headers={"Origin": "https://app.example"})
    assert page.status_code == 200 and "access-control-allow-origin" not in page.headers


# ------------------------------------------------------------ the buckets
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_buckets_hold_a_minutes_burst_and_refill_continuously() -> None:
    clock = Clock()
    buckets = TokenBuckets(4, clock)
    assert [buckets.take("k", 1) for _ in range(4)] == [0.0] * 4
    assert buckets.take("k", 1) == pytest.approx(15.0)
    clock.now += 7.5
    assert buckets.take("k", 1) == pytest.approx(7.5)  # half a token back: refused, not taken
    clock.now += 7.5
    assert buckets.take("k", 1) == 0.0
    assert buckets.take("other", 1) == 0.0  # identities never share


def test_a_cost_over_a_full_bucket_passes_once_and_leaves_it_in_debt() -> None:
    clock = Clock()
    buckets = TokenBuckets(3, clock)  # 3 audio seconds per minute: 0.05 per second
    assert buckets.take("k", 10) == 0.0
    assert buckets.level("k") == pytest.approx(-7)
    assert buckets.take("k", 1) == pytest.approx(8 / 0.05)
    limiter = RateLimiter(audio_seconds_per_minute=3, clock=clock)
    assert limiter.take_audio("k", 2.0) is None
    refusal = limiter.take_audio("k", 2.0)
    assert refusal is not None and refusal.retry_after == 20 and refusal.status == 429


def test_bucket_memory_is_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(60, clock, max_buckets=100)
    for i in range(1000):
        buckets.take(f"caller-{i}", 1)
    assert len(buckets) == 100
    clock.now += 1.0  # every bucket refilled: idle ones are dropped as others come in
    buckets.take("late", 1)
    assert len(buckets) == 1
    limiter = RateLimiter(max_streams=2)
    assert limiter.open_stream("k") is None and limiter.open_stream("k") is None
    assert limiter.open_stream("k") is not None
    limiter.close_stream("k")
    limiter.close_stream("k")
    assert limiter.open_streams == 0 and limiter.open_stream("k") is None
