"""``GET /``: a page to try lass in a browser; ``GET /static/{name}``: its assets.

The page (service/static/) is plain HTML, CSS and JavaScript modules, with no build step
and nothing loaded from elsewhere: the Content-Security-Policy below allows only this
server, so a stray external URL fails loudly in the browser instead of leaking a request.
Only the files listed in ``ASSETS`` are served (no path from the URL ever reaches the file
system), and each is read once per process, not per request.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import ApiError

router = APIRouter(tags=["web"], include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# 'self' covers ws:/wss: to this host in current browsers; blob: is the uploaded file
# played back by <audio>; data: the empty favicon (so the browser asks for no /favicon.ico).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change only with the installed package; revalidating is cheap locally.
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.api_route("/", methods=["GET", "HEAD"])
def index() -> Response:
    """The page."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}")
def asset(name: str) -> Response:
    """One of the page's scripts or its style sheet; 404 for anything else."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, f"no static file {name!r}", code="not_found")
    return Response(_read(name), media_type=media_type, headers=HEADERS)
