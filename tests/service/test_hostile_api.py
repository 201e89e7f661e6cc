"""Hostile clients against a real server (issue 14); docs/reliability.md lists every case.

The session server (tests/service/conftest.py) runs with the repository as its working
directory, so relative paths below name real files there.
"""

from __future__ import annotations

import time

import httpx

from tests.conftest import Server
from tests.service.test_errors_api import error_of

URL = "/v1/audio/transcriptions"


def post_file(server: Server, content: bytes, name: str, **fields: str) -> httpx.Response:
    return httpx.post(
        server.base_url + URL,
        files={"file": (name, content, "application/octet-stream")},
        data={"language": "en", **fields},
        timeout=60,
    )


def test_playlists_and_stream_descriptions_are_415_revealing_nothing(server: Server) -> None:
    bodies = []
    for path in ("model/default_bundle/manifest.json", "model/no_such_file", "README.md"):
        for name, content in (
            ("x", f"ffconcat version 1.0\nfile {path}\n".encode()),
            ("x.m3u8", f"#EXTM3U\n#EXTINF:1.0,\n{path}\n#EXT-X-ENDLIST\n".encode()),
            ("x", f"file:{path}".encode()),
        ):
            response = post_file(server, content, name)
            err = error_of(response, 415)
            assert err["code"] == "unsupported_audio"
            assert path not in err["message"] and "such file" not in err["message"]
            bodies.append(err["message"].replace(f"({name}, application/octet-stream)", ""))
    assert len(set(bodies)) == 1, set(bodies)  # no oracle for whether a path exists


def test_sdp_upload_is_refused_at_once(server: Server) -> None:
    sdp = (
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 45678 RTP/AVP 0\r\n"
    )
    start = time.monotonic()
    err = error_of(post_file(server, sdp, "x.sdp"), 415)
    assert time.monotonic() - start < 2.0  # it bound UDP ports and waited 20 s
    assert err["param"] == "file"
