"""Upload size guard: Content-Length, streamed counting, the ASGI middleware (in-process and
through a real uvicorn server)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, UploadFile

from model.audio import AudioError
from service.audio import BodySizeLimitMiddleware, UploadTooLargeError, check_content_length
from service.errors import from_audio_error
from tests.conftest import free_port

LIMIT = 100_000
CHUNK = 8_192
UPLOAD_PATH = "/v1/audio/transcriptions"


PART_HEAD = b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.wav\r\n\r\n"


class CountingBody:
    """An async body of ``total`` bytes that records how much was pulled from it.

    With ``multipart_head`` it starts like a multipart upload (boundary ``xyz``), so a
    form parser keeps reading the file part instead of failing on the first bytes.
    """

    def __init__(self, total: int, chunk: int = CHUNK, multipart_head: bool = False) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0
        self.head = PART_HEAD if multipart_head else b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            self.sent += len(self.head)
            yield self.head
        while self.sent < self.total:
            piece = min(self.chunk, self.total - self.sent)
            self.sent += piece
            yield b"\x00" * piece


def make_app(rejected: list[AudioError]) -> FastAPI:
    """A real FastAPI app with a multipart upload route, behind the middleware."""
    app = FastAPI()

    @app.post(UPLOAD_PATH)
    async def upload(file: UploadFile) -> dict[str, int]:
        return {"size": len(await file.read())}

    @app.post("/other")
    async def other(file: UploadFile) -> dict[str, int]:
        return {"size": len(await file.read())}

    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=LIMIT, paths=(UPLOAD_PATH,), on_reject=rejected.append
    )
    return app


def multipart(size: int) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("a.wav", b"\x01" * size, "audio/wav")}


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert str(LIMIT) in error["message"]


def test_check_content_length() -> None:
    check_content_length(None, 10)
    check_content_length("10", 10)
    check_content_length(b"not-a-number", 10)
    with pytest.raises(UploadTooLargeError) as info:
        check_content_length(b"11", 10)
    assert from_audio_error(info.value).status == 413


async def _post(app: FastAPI, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, **kwargs)  # type: ignore[arg-type]


def test_middleware_passes_uploads_under_the_limit() -> None:
    rejected: list[AudioError] = []
    response = asyncio.run(_post(make_app(rejected), UPLOAD_PATH, files=multipart(LIMIT // 2)))
    assert response.status_code == 200
    assert response.json() == {"size": LIMIT // 2}
    assert rejected == []


def test_middleware_rejects_by_content_length() -> None:
    rejected: list[AudioError] = []
    response = asyncio.run(_post(make_app(rejected), UPLOAD_PATH, files=multipart(2 * LIMIT)))
    assert_413(response)
    assert len(rejected) == 1 and isinstance(rejected[0], UploadTooLargeError)


def test_middleware_stops_reading_a_chunked_body_at_the_limit() -> None:
    # No Content-Length (chunked): the middleware counts, cuts the body off and answers 413
    # even though FastAPI's form parser fails first and would have answered 400.
    rejected: list[AudioError] = []
    body = CountingBody(50 * LIMIT, multipart_head=True)
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    response = asyncio.run(_post(make_app(rejected), UPLOAD_PATH, content=body, headers=headers))
    assert_413(response)
    assert body.sent <= LIMIT + CHUNK  # never read (so never buffered) past the limit
    assert len(rejected) == 1


def test_middleware_leaves_other_paths_alone() -> None:
    rejected: list[AudioError] = []
    response = asyncio.run(_post(make_app(rejected), "/other", files=multipart(2 * LIMIT)))
    assert response.status_code == 200
    assert rejected == []


@pytest.fixture
def uvicorn_url() -> Iterator[str]:
    """The same app under a real uvicorn server in a thread."""
    port = free_port()
    config = uvicorn.Config(make_app([]), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_real_uvicorn_answers_413_before_the_whole_body(uvicorn_url: str) -> None:
    with httpx.Client(base_url=uvicorn_url, timeout=10) as client:
        ok = client.post(UPLOAD_PATH, files=multipart(LIMIT // 2))
        assert ok.status_code == 200
        assert_413(client.post(UPLOAD_PATH, files=multipart(30 * LIMIT)))

        def chunks() -> Iterator[bytes]:
            yield PART_HEAD
            for _ in range(30 * LIMIT // CHUNK):
                yield b"\x01" * CHUNK

        try:
            response = client.post(
                UPLOAD_PATH,
                content=chunks(),
                headers={"content-type": "multipart/form-data; boundary=xyz"},
            )
        except httpx.WriteError:
            # The server may close before the client finished sending; that is a rejection too.
            return
        assert_413(response)
