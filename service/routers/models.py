"""``GET /v1/models``: the served model, OpenAI-style list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.context import AppContext, get_context

router = APIRouter(tags=["models"])


@router.get("/v1/models")
def list_models(ctx: AppContext = Depends(get_context)) -> dict[str, Any]:
    """The bundle's model (and the aliases it answers to), as OpenAI lists models."""
    engine = ctx.engine
    created = _created(engine)
    ids = [engine.model_id, *ctx.settings.model_aliases] if engine.ready else []
    # lass extension: the languages served now (they change with POST/DELETE /v1/languages)
    langs = engine.languages
    return {
        "object": "list",
        "data": [
            {"id": i, "object": "model", "created": created, "owned_by": "lass", "languages": langs}
            for i in ids
        ],
    }


@router.get(
    "/v1/models/{model_id}",
    responses={404: {"description": "No such model (OpenAI's error shape, code model_not_found)"}},
)
def get_model(model_id: str, ctx: AppContext = Depends(get_context)) -> dict[str, Any]:
    """One model, or 404 in OpenAI's error shape."""
    from service.errors import ApiError

    engine = ctx.engine
    if not engine.ready or model_id not in (engine.model_id, *ctx.settings.model_aliases):
        raise ApiError(
            404, f"model {model_id!r} does not exist", param="model", code="model_not_found"
        )
    return {
        "id": model_id,
        "object": "model",
        "created": _created(engine),
        "owned_by": "lass",
        "languages": engine.languages,
    }


def _created(engine: Any) -> int:
    """The bundle's creation time as a Unix timestamp (0 when unknown)."""
    import calendar
    import time

    if engine.worker is None:
        return 0
    stamp = engine.worker.bundle.manifest.get("created")
    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return 0
