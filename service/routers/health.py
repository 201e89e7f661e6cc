"""Liveness (the process answers) and readiness (bundle loaded and warmed up)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.context import AppContext, get_context

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """200 while the process serves HTTP at all."""
    return {"status": "live"}


@router.get("/health/ready")
def ready(ctx: AppContext = Depends(get_context)) -> JSONResponse:
    """200 once the bundle is loaded and the warm-up batch ran; 503 before, after a failed
    load, and while shutting down."""
    engine = ctx.engine
    body: dict[str, object] = {"status": engine.state}
    if engine.error:
        body["error"] = engine.error
    ok = engine.ready and engine.batcher.accepting
    if ok:
        body["languages"] = engine.languages
        body["batch_policy"] = engine.batch_choice
    return JSONResponse(body, status_code=200 if ok else 503)
