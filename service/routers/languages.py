"""``GET /v1/languages``: what each language's sub-network is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.context import AppContext, get_context

router = APIRouter(tags=["languages"])


@router.get("/v1/languages")
def list_languages(ctx: AppContext = Depends(get_context)) -> dict[str, Any]:
    """Each language with its alphabet, mask density, language-specific parameters and LM."""
    engine = ctx.engine
    if engine.worker is None:
        return {"object": "list", "data": []}
    manifest = engine.worker.bundle.manifest
    lm_paths = engine.worker.bundle.lm_paths
    total = manifest.get("mask_stats", {}).get("total_parameters")
    data = []
    for lang in engine.languages:
        entry = manifest["languages"][lang]
        mask = entry.get("mask", {})
        data.append(
            {
                "code": lang,
                "object": "language",
                "alphabet": entry["alphabet"],
                "density": mask.get("density"),
                "kept_parameters": mask.get("kept"),
                "specific_parameters": mask.get("specific"),
                "prunable_parameters": total,
                "lm": lang in lm_paths,
            }
        )
    return {"object": "list", "data": data}
