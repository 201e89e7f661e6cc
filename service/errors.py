"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every error a client can cause is an :class:`ApiError` (or an audio error carrying the same
fields); the handlers installed by :func:`install_error_handlers` turn them, FastAPI's
validation errors and plain HTTP errors into that JSON body, so no client input ever
yields a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.audio import AudioError

log = logging.getLogger("lass.service")


def openai_error_body(
    message: str, type: str, param: str | None, code: str | None
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """An error answered as JSON in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return openai_error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_field(param: str, message: str, code: str = "invalid_value") -> ApiError:
    """A 400 naming the offending request field."""
    return ApiError(400, message, param=param, code=code)


# The HTTP status of each audio error code (``model.audio``'s errors, and the upload limit's
# ``file_too_large``); every other audio error is the client's bad input: 400.
AUDIO_STATUS = {"unsupported_audio": 415, "audio_too_long": 413, "file_too_large": 413}


def from_audio_error(exc: AudioError) -> ApiError:
    """Map an audio error (``model.audio``, ``service.audio``) to an :class:`ApiError`."""
    return ApiError(AUDIO_STATUS.get(exc.code, 400), exc.message, param=exc.param, code=exc.code)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
    return ApiError(422, message, param=param, code="invalid_value").response()


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return ApiError(
        exc.status_code,
        str(exc.detail),
        code=codes.get(exc.status_code),
        headers=dict(exc.headers or {}),
    ).response()


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return ApiError(500, "internal server error", code="internal_error").response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
