"""``GET /v1/languages``: what each language's sub-network is; ``GET /v1/languages/overlap``:
how much every pair of sub-networks shares (Jaccard of their masks); ``POST /v1/languages``
and ``DELETE /v1/languages/{code}`` (admin scope): add a language from a language pack, or
remove one, without a restart (``service/packs.py``, ``Engine.add_language``)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from model.masks import LanguageMasks
from model.packs import LanguagePack, PackError, PackMismatchError
from service.auth import require_admin
from service.context import AppContext, get_context
from service.engine import (
    Engine,
    LanguageExistsError,
    LastLanguageError,
    NotReadyError,
    UnknownLanguageError,
)
from service.errors import ApiError
from service.packs import discard_staging, pack_error, read_upload, unpack

router = APIRouter(tags=["languages"])
OVERLAP_PATH = "/v1/languages/overlap"
# Guards only the creation of an app's OverlapCache (each cache has its own lock).
_CACHE_CREATION = threading.Lock()


def language_entry(engine: Engine, lang: str) -> dict[str, Any]:
    """One served language as ``GET /v1/languages`` lists it. ``source`` says where it came
    from: the bundle, or a pack added at run time (whose figures its trainer computed
    against the bundle's languages; it has no LID output, so requests name it)."""
    assert engine.worker is not None
    manifest = engine.worker.bundle.manifest
    total = manifest.get("mask_stats", {}).get("total_parameters")
    pack = engine.packs.get(lang)
    entry = pack.manifest if pack is not None else manifest["languages"][lang]
    mask = entry.get("mask", {})
    return {
        "code": lang,
        "object": "language",
        "alphabet": entry["alphabet"],
        "density": mask.get("density"),
        "kept_parameters": mask.get("kept"),
        "specific_parameters": mask.get("specific"),
        "prunable_parameters": total,
        "lm": lang in engine.lm_paths,
        "source": "pack" if pack is not None else "bundle",
        "identifiable": pack is None and engine.worker.has_lid,
    }


@router.get("/v1/languages")
def list_languages(ctx: AppContext = Depends(get_context)) -> dict[str, Any]:
    """Each language with its alphabet, mask density, language-specific parameters and LM."""
    engine = ctx.engine
    if engine.worker is None:
        return {"object": "list", "data": []}
    return {"object": "list", "data": [language_entry(engine, lang) for lang in engine.languages]}


def _not_ready(ctx: AppContext) -> ApiError:
    return ApiError(
        503,
        f"the model is not loaded ({ctx.engine.error or ctx.engine.state}); retry later",
        code="not_ready",
        headers={"Retry-After": str(ctx.settings.retry_after_s)},
    )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers (OpenAI's error shape)."""
    return {
        s: {"description": "error in OpenAI's shape: {error: {message, type, param, code}}"}
        for s in statuses
    }


@router.post(
    "/v1/languages",
    status_code=201,
    dependencies=[Depends(require_admin)],
    responses=_errors(401, 403, 409, 413, 415, 422, 503),
)
async def add_language(request: Request, ctx: AppContext = Depends(get_context)) -> JSONResponse:
    """Add a language from an uploaded pack (multipart field ``file``: a tar of the pack
    folder). 201 with the language; 413 too large; 422 malformed; 409 trained on other
    weights, or the language is served already. Kept in ``LASS_PACKS_DIR`` when set."""
    engine = ctx.engine
    if not engine.ready:
        raise _not_ready(ctx)
    limit = ctx.settings.max_pack_bytes
    data = await read_upload(request, limit)
    try:
        pack: LanguagePack = await asyncio.to_thread(unpack, data, engine.store, limit)
    except PackError as exc:
        raise pack_error(exc) from exc
    committed = False
    try:
        if pack.language in engine.languages:
            raise ApiError(
                409,
                f"language {pack.language!r} is already served; DELETE it first",
                code="language_exists",
            )
        try:
            pack = await asyncio.to_thread(engine.store.commit, pack)
            committed = True
            await engine.add_language(pack)
        except PackMismatchError as exc:
            raise ApiError(409, str(exc), code="backbone_mismatch") from exc
        except PackError as exc:
            raise pack_error(exc) from exc
        except LanguageExistsError as exc:
            raise ApiError(409, str(exc), code="language_exists") from exc
        except NotReadyError as exc:
            raise _not_ready(ctx) from exc
    except BaseException:
        if committed:
            engine.store.delete(pack.language)
        raise
    finally:
        if not committed:
            discard_staging(pack)
    return JSONResponse(language_entry(engine, pack.language), status_code=201)


@router.delete(
    "/v1/languages/{code}",
    dependencies=[Depends(require_admin)],
    responses=_errors(401, 403, 404, 409, 503),
)
async def remove_language(code: str, ctx: AppContext = Depends(get_context)) -> dict[str, Any]:
    """Stop serving ``code`` once its requests in flight finish; 404 not served, 409 the last
    language. An added language's pack is deleted from ``LASS_PACKS_DIR``; a bundle language
    stays removed across restarts (``removed.json`` there)."""
    engine = ctx.engine
    if not engine.ready:
        raise _not_ready(ctx)
    was_pack = code in engine.packs
    try:
        await engine.remove_language(code)
    except UnknownLanguageError as exc:
        raise ApiError(404, str(exc), param="code", code="unsupported_language") from exc
    except LastLanguageError as exc:
        raise ApiError(409, str(exc), code="last_language") from exc
    except TimeoutError as exc:
        raise ApiError(
            503,
            f"language {code!r} is still in use ({exc}); retry later",
            code="language_busy",
            headers={"Retry-After": str(ctx.settings.retry_after_s)},
        ) from exc
    if was_pack:
        await asyncio.to_thread(engine.store.delete, code)
    else:
        engine.store.set_removed([*engine.store.removed(), code])
    return {"code": code, "object": "language", "deleted": True}


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
