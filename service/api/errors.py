"""Maps every failure to `{"error": {"code", "message"}}` with a real status, in one place."""

from __future__ import annotations

import errno
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from service.bounds import bounded
from service.errors import InsufficientStorage, ServiceError
from service.storage.base import StorageError
from workers.compression.errors import CompressionError, UnsupportedModelFormat

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger(__name__)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               429: "rate_limited"}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Builds the one error shape every endpoint answers with (the message cut to a fixed length)."""
    body = {"error": {"code": code, "message": bounded(message)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    """A deliberate service error: its own status and code."""
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message, exc.headers or None)


async def _engine_error(_: Request, exc: Exception) -> JSONResponse:
    """An input the engine refuses: 415 for a format we never accept, 422 for the rest."""
    assert isinstance(exc, CompressionError)
    return error_response(415 if isinstance(exc, UnsupportedModelFormat) else 422, exc.code, exc.message)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's parameter validation: 422 invalid_request, naming each bad field."""
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in exc.errors()
    )
    return error_response(422, "invalid_request", problems or "invalid request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405, …) in our shape, headers kept."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    """A database that is down, locked or too slow: 503, so clients retry instead of seeing a 500."""
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return error_response(503, "database_unavailable", "the database is unavailable; retry shortly",
                          {"Retry-After": "5"})


async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
    """An object store that fails or cannot be reached: 503."""
    log.warning("%s %s: storage unavailable: %s", request.method, request.url.path, exc)
    return error_response(503, "storage_unavailable", "the object store is unavailable; retry shortly",
                          {"Retry-After": "5"})


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    """A full disk (or quota) while receiving or checking an upload: 507 with a code; anything else a bug."""
    assert isinstance(exc, OSError)
    if exc.errno not in _DISK_FULL:
        return await _unexpected(request, exc)
    log.error("%s %s: out of disk space: %s", request.method, request.url.path, exc)
    full = InsufficientStorage("the server has no disk space left for this request; nothing was kept. "
                               "Retry later", headers={"Retry-After": "60"})
    return await _service_error(request, full)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as a bare 500 (no internals leak)."""
    log.error("%s %s: unhandled error", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers; the most specific class wins, so order here does not matter."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(CompressionError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_down)
    app.add_exception_handler(StorageError, _storage_down)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected)
