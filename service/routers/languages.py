"""``GET /v1/languages``: what each language's sub-network is; ``GET /v1/languages/overlap``:
how much every pair of sub-networks shares (Jaccard of their masks)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request

from model.masks import LanguageMasks
from service.context import AppContext, get_context
from service.errors import ApiError

router = APIRouter(tags=["languages"])
OVERLAP_PATH = "/v1/languages/overlap"
# Guards only the creation of an app's OverlapCache (each cache has its own lock).
_CACHE_CREATION = threading.Lock()


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


@dataclass
class OverlapCache:
    """The overlap answer for one set of masks, keyed on their identity and every language's
    mask generation, so a re-added or replaced language is recomputed and nothing else is.
    Computing it walks every pair's packed bits (tens of ms on the default bundle's 10
    languages, growing with the square of their number): once, not per request."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    key: tuple[int, tuple[tuple[str, int], ...]] | None = None
    body: dict[str, Any] | None = None

    def get(self, masks: LanguageMasks, languages: list[str]) -> dict[str, Any]:
        key = (id(masks), tuple((lang, masks.generation(lang)) for lang in languages))
        with self.lock:  # two first requests at once compute it once
            if self.key != key or self.body is None:
                self.body, self.key = overlap_body(masks, languages), key
            return self.body


def overlap_body(masks: LanguageMasks, languages: list[str]) -> dict[str, Any]:
    """The JSON answer: ``jaccard[i][j]`` = |kept by i and j| / |kept by i or j|."""
    stats = masks.stats()
    return {
        "object": "language_overlap",
        "languages": languages,
        "jaccard": [[round(stats.jaccard[a][b], 6) for b in languages] for a in languages],
        "density": [round(stats.density[lang], 6) for lang in languages],
        "kept_by_all": round(stats.kept_by_all, 6),
        "prunable_parameters": stats.total_parameters,
    }


@router.get(OVERLAP_PATH)
def language_overlap(request: Request, ctx: AppContext = Depends(get_context)) -> dict[str, Any]:
    """Pairwise Jaccard overlap of the served languages' sub-networks, from the loaded masks.

    A sync route: FastAPI runs it in its thread pool, so the one-time computation never
    blocks the event loop. The cache lives on the app (no module globals: tests build
    several apps)."""
    worker = ctx.engine.worker
    if worker is None:
        raise ApiError(
            503,
            f"the model is not loaded ({ctx.engine.error or ctx.engine.state}); retry later",
            code="not_ready",
            headers={"Retry-After": str(ctx.settings.retry_after_s)},
        )
    with _CACHE_CREATION:
        cache: OverlapCache | None = getattr(request.app.state, "language_overlap", None)
        if cache is None:
            cache = request.app.state.language_overlap = OverlapCache()
    return cache.get(worker.bundle.masks, ctx.engine.languages)
