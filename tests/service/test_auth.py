"""API keys, the open routes, the metrics port and CORS, against a real ``lass serve``:
the official ``openai`` client (REST and realtime), raw httpx and WebSocket clients."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets
from pydantic import SecretStr
from typer.testing import CliRunner

from lass.client import read_pcm16, stream_pcm
from service.app import create_app
from service.auth import KeyFileError, KeyStore, Principal, hash_key, parse_entries, require_admin
from service.errors import ApiError
from service.settings import Settings
from tests.conftest import Server, Utterance, free_port, stop_server
from tests.service.conftest import serve

USER_KEY = "user-key-5d1c9a0e7b"
ADMIN_KEY = "admin-key-0f3b6e21c4"
FILE_KEY = "file-key-8a7c2d4e6f"  # in the keys file as its salted hash only
NEW_KEY = "new-key-c3e9a1f7b5d"  # added to the file while the server runs
ALL_KEYS = (USER_KEY, ADMIN_KEY, FILE_KEY, NEW_KEY)
ORIGIN = "https://app.example"
START = json.dumps({"type": "start", "language": "en"})


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# clients\n{hash_key(FILE_KEY)}\n")
    return path


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bundle: Path,
    keys_file: Path,
    metrics_port: int,
) -> Iterator[Server]:
    srv = serve(
        tmp_path_factory.mktemp("keyed"),
        tiny_bundle,
        LASS_API_KEYS=f"{USER_KEY}, {ADMIN_KEY} admin",
        LASS_API_KEYS_FILE=str(keys_file),
        LASS_METRICS_PORT=str(metrics_port),
        LASS_METRICS_REQUIRE_KEY="true",
        LASS_CORS_ORIGINS=ORIGIN,
    )
    yield srv
    stop_server(srv)


def ws_url(server: Server, path: str) -> str:
    return server.base_url.replace("http://", "ws://") + path


def get(server: Server, path: str, **headers: str) -> httpx.Response:
    return httpx.get(server.base_url + path, headers=headers, timeout=10)


def assert_invalid_key(response: httpx.Response, missing: bool) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None and error["code"] == "invalid_api_key"
    assert error["message"].startswith("Missing API key" if missing else "Incorrect API key")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def exchange(
    url: str, messages: list[str], headers: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``messages``, read until the server closes: (events, close code)."""
    events: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers=headers or {}) as ws:
        for m in messages:
            try:
                await ws.send(m)
            except websockets.ConnectionClosed:
                break
        try:
            async with asyncio.timeout(10):
                while True:
                    events.append(json.loads(await ws.recv()))
        except (TimeoutError, websockets.ConnectionClosed):
            pass
        return events, ws.close_code


# ------------------------------------------------------------ REST
def test_the_openai_client_with_its_key_transcribes_and_with_a_wrong_one_gets_invalid_api_key(
    keyed: Server, speech: dict[str, list[Utterance]]
) -> None:
    path = speech["en"][0].path
    client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=USER_KEY, max_retries=0)
    with path.open("rb") as f:
        text = client.audio.transcriptions.create(
            file=f, model="whisper-1", language="en", response_format="text"
        )
    assert isinstance(text, str)
    wrong = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="not-a-key-123", max_retries=0)
    with path.open("rb") as f, pytest.raises(openai.AuthenticationError) as caught:
        wrong.audio.transcriptions.create(file=f, model="whisper-1", language="en")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert [m.id for m in client.models.list()]


def test_keys_as_bearer_or_x_api_key_plain_or_hashed_and_the_401s(
    keyed: Server, keys_file: Path
) -> None:
    for headers in (
        {"Authorization": f"Bearer {USER_KEY}"},
        {"Authorization": f"bearer {ADMIN_KEY}"},
        {"X-API-Key": USER_KEY},
        {"Authorization": f"Bearer {FILE_KEY}"},  # the file holds only its hash
        {"X-API-Key": FILE_KEY},
    ):
        for path in ("/v1/models", "/v1/languages", "/v1/models/whisper-1"):
            assert get(keyed, path, **headers).status_code == 200, (path, headers)
    assert_invalid_key(get(keyed, "/v1/models"), missing=True)
    assert_invalid_key(get(keyed, "/v1/languages", Authorization="Bearer wrong-key-123"), False)
    assert_invalid_key(get(keyed, "/v1/models", **{"X-API-Key": FILE_KEY[:-1]}), False)
    # The hash itself is not a key, nor a Basic credential, nor ?api_key= on plain HTTP.
    hashed = keys_file.read_text().splitlines()[1]
    assert hashed.startswith("sha256:")
    assert_invalid_key(get(keyed, "/v1/models", Authorization=f"Bearer {hashed}"), False)
    assert_invalid_key(get(keyed, "/v1/models", Authorization=f"Basic {USER_KEY}"), True)
    response = httpx.get(f"{keyed.base_url}/v1/models", params={"api_key": USER_KEY}, timeout=10)
    assert_invalid_key(response, missing=True)
    # A refused upload is answered from the headers alone, before the body is read.
    response = httpx.post(
        f"{keyed.base_url}/v1/audio/transcriptions",
        files={"file": ("a.wav", b"\0" * 200_000, "audio/wav")},
        timeout=10,
    )
    assert_invalid_key(response, missing=True)


def test_health_the_page_and_its_assets_stay_open_and_metrics_need_a_key_or_the_other_port(
    keyed: Server, metrics_port: int
) -> None:
    for path in ("/health/live", "/health/ready", "/", "/static/app.js", "/static/style.css"):
        assert get(keyed, path).status_code == 200, path
    assert_invalid_key(get(keyed, "/metrics"), missing=True)
    assert get(keyed, "/metrics", Authorization=f"Bearer {USER_KEY}").status_code == 200
    # The second port serves the same registry, without a key.
    body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'lass_rejected_requests_total{reason="invalid_api_key"}' in body
    assert "lass_queue_depth 0.0" in body
    for key in ALL_KEYS:
        assert key not in body


# ------------------------------------------------------------ WebSocket
def test_streams_take_the_key_from_a_header_or_api_key_and_refuse_others_before_any_audio(
    keyed: Server, speech: dict[str, list[Utterance]]
) -> None:
    pcm = read_pcm16(speech["en"][0].path)
    events = asyncio.run(
        stream_pcm(keyed.base_url, pcm, {"language": "en"}, realtime=False, api_key=USER_KEY)
    )
    assert events[0]["type"] == "started" and events[-1]["type"] == "summary"
    stop = json.dumps({"type": "stop"})
    url = ws_url(keyed, "/v1/stream")
    for query_url, headers in (
        (f"{url}?api_key={FILE_KEY}", {}),
        (url, {"X-API-Key": ADMIN_KEY}),
    ):
        events, close = asyncio.run(exchange(query_url, [START, stop], headers))
        assert [e["type"] for e in events] == ["started", "summary"] and close == 1000
    for bad_url, headers, missing in (
        (url, {}, True),
        (f"{url}?api_key=wrong-key-123", {}, False),
        (url, {"Authorization": "Bearer wrong-key-123"}, False),
        (ws_url(keyed, "/v1/realtime?intent=transcription"), {}, True),
    ):
        # The audio frame is never read: the only event is the refusal.
        events, close = asyncio.run(exchange(bad_url, [START, "\0" * 64], headers))
        assert [e["type"] for e in events] == ["error"], events
        error = events[0]["error"]
        assert error["code"] == "invalid_api_key" and close == 1008
        assert error["message"].startswith("Missing" if missing else "Incorrect")


def test_the_openai_realtime_client_sends_its_key(keyed: Server) -> None:
    async def first_event(key: str) -> Any:
        client = openai.AsyncOpenAI(base_url=f"{keyed.base_url}/v1", api_key=key)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            async with asyncio.timeout(10):
                return await conn.recv()

    assert asyncio.run(first_event(ADMIN_KEY)).type == "session.created"
    refused = asyncio.run(first_event("wrong-key-123"))
    assert refused.type == "error" and refused.error.code == "invalid_api_key"


# ------------------------------------------------------------ the keys file
def test_the_keys_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_keys(
    keyed: Server, keys_file: Path
) -> None:
    def status(key: str) -> int:
        return get(keyed, "/v1/models", Authorization=f"Bearer {key}").status_code

    original = keys_file.read_text()
    try:
        assert (status(FILE_KEY), status(NEW_KEY)) == (200, 401)
        keys_file.write_text(f"{hash_key(NEW_KEY)} admin\n")
        assert (status(FILE_KEY), status(NEW_KEY), status(USER_KEY)) == (401, 200, 200)
        keys_file.write_text("sha256:zz:not-hex\n")  # half-written or wrong: keep what works
        assert status(NEW_KEY) == 200
        assert "not reloaded" in keyed.log() and "keeping the 3 keys" in keyed.log()
        keys_file.unlink()
        assert status(NEW_KEY) == 200
    finally:
        keys_file.write_text(original)
    assert (status(FILE_KEY), status(NEW_KEY)) == (200, 401)


def test_sighup_rereads_the_keys_file_and_leaves_the_server_running(keyed: Server) -> None:
    before = keyed.log().count("(SIGHUP)")
    os.kill(keyed.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while keyed.log().count("(SIGHUP)") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keyed.log().count("(SIGHUP)") == before + 1
    assert keyed.process.poll() is None
    assert get(keyed, "/v1/models", Authorization=f"Bearer {FILE_KEY}").status_code == 200


# ------------------------------------------------------------ CORS
def test_cors_preflight_from_an_allowed_and_a_disallowed_origin(keyed: Server) -> None:
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(
            f"{keyed.base_url}/v1/audio/transcriptions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
            timeout=10,
        )

    allowed = preflight(ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "POST" in allowed.headers["access-control-allow-methods"]
    denied = preflight("https://evil.example")
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers
    # A refusal carries the headers a page needs to read it (and its Retry-After).
    refused = get(keyed, "/v1/models", Origin=ORIGIN)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
    other = get(keyed, "/v1/models", Origin="https://x.example")
    assert "access-control-allow-origin" not in other.headers


# ------------------------------------------------------------ logs
def test_no_key_reaches_the_log(keyed: Server) -> None:
    url = ws_url(keyed, f"/v1/stream?api_key={USER_KEY}")
    events, _ = asyncio.run(exchange(url, [START, json.dumps({"type": "stop"})]))
    assert events[0]["type"] == "started"
    get(keyed, f"/v1/models?api_key={ADMIN_KEY}")
    log = keyed.log()
    assert "api_key=[redacted]" in log
    for key in ALL_KEYS:
        assert key not in log


# ------------------------------------------------------------ in-process
def test_require_admin_lets_admin_keys_and_keys_off_callers_through() -> None:
    app = create_app(Settings(bundle=Path("/nonexistent"), api_keys=SecretStr(USER_KEY)))
    ctx = app.state.ctx
    store = KeyStore(f"{USER_KEY},{ADMIN_KEY} admin")
    admin, user = store.authenticate(ADMIN_KEY), store.authenticate(USER_KEY)
    assert admin is not None and user is not None and admin.admin and not user.admin
    assert asyncio.run(require_admin(admin, ctx)) is admin
    with pytest.raises(ApiError) as caught:
        asyncio.run(require_admin(user, ctx))
    assert caught.value.status == 403 and caught.value.code == "insufficient_permissions"
    anyone = Principal("127.0.0.1", "addr:127.0.0.1", frozenset({"admin"}))
    assert asyncio.run(require_admin(anyone, ctx)) is anyone
    body, _ = ctx.metrics.render()
    assert b'lass_rejected_requests_total{reason="admin_required"} 1.0' in body


def test_key_entries_hashes_and_their_errors() -> None:
    line = hash_key(FILE_KEY, salt="0a1b")
    digest = hashlib.sha256(("0a1b" + FILE_KEY).encode()).hexdigest()
    assert line == f"sha256:0a1b:{digest}"  # printf %s "$salt$key" | sha256sum
    store = KeyStore(f"{line} admin")
    found = store.authenticate(FILE_KEY)
    assert found is not None and found.admin and found.name.startswith("key-")
    assert FILE_KEY not in found.name + found.bucket
    assert store.authenticate(FILE_KEY + "x") is None and store.authenticate("") is None
    for text, message in (
        (f"{USER_KEY} root", "line 2: unknown scope 'root'"),
        ("sha256:abc:1234", "line 2: a hashed key is sha256:<salt>:<64 hex digits>"),
        ("short", "line 2: a key is at least 8"),
    ):
        with pytest.raises(KeyFileError, match=message) as caught:
            parse_entries(["# comment", text], "keys.txt")
        assert USER_KEY not in str(caught.value)
    with pytest.raises(KeyFileError, match="No such file"):
        KeyStore(path=Path("/nonexistent/keys.txt"))
    runner = CliRunner()
    from lass.cli import app as cli

    result = runner.invoke(cli, ["keys", "hash", "--admin"], input=f"{FILE_KEY}\n")
    assert result.exit_code == 0, result.output
    entry, scope = result.output.split()
    assert scope == "admin"
    assert KeyStore(entry).authenticate(FILE_KEY) is not None
    new = runner.invoke(cli, ["keys", "new"]).output.strip()
    assert len(new) > 40 and KeyStore(hash_key(new)).authenticate(new) is not None


def test_a_non_loopback_host_without_keys_warns(caplog: pytest.LogCaptureFixture) -> None:
    bundle = Path("/nonexistent")
    with caplog.at_level(logging.WARNING, logger="lass.service"):
        create_app(Settings(bundle=bundle, host="127.0.0.1"))
        create_app(Settings(bundle=bundle, host="0.0.0.0", api_keys=SecretStr(USER_KEY)))
        assert not caplog.records
        create_app(Settings(bundle=bundle, host="0.0.0.0"))
    assert "no API keys are set" in caplog.text and USER_KEY not in caplog.text
