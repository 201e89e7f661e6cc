"""``GET /metrics``: Prometheus exposition of the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.context import AppContext, get_context

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(ctx: AppContext = Depends(get_context)) -> Response:
    ctx.metrics.set_queue_depth(ctx.engine.batcher.depth)
    body, content_type = ctx.metrics.render()
    return Response(body, media_type=content_type)
