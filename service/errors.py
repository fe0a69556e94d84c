"""The service's error hierarchy: each error names its HTTP status and a stable code (see api/errors.py).

Engine refusals (`workers.compression.errors.UserError`: invalid_model, invalid_config, …) are used as they
are; these classes cover what only the service can refuse.
"""

from __future__ import annotations

from service.bounds import bounded

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]


class ServiceError(Exception):
    """Base of every deliberate service error: `status` for HTTP, `code` for code, `message` for people."""

    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        message = bounded(message)  # a message may quote client input: never longer than a fixed bound
        super().__init__(message)
        self.message = message
        self.headers = headers or {}  # e.g. Retry-After, WWW-Authenticate
        if code is not None:
            self.code = code


class BadRequest(ServiceError):
    """The request body is malformed (e.g. a broken multipart stream)."""

    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    """No valid credentials were presented."""

    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    """The caller is known but may not do this now (e.g. its storage quota is used up)."""

    status, code = 403, "forbidden"


class NotFound(ServiceError):
    """No such resource for this caller (another tenant's job looks exactly the same)."""

    status, code = 404, "not_found"


class RequestTimeout(ServiceError):
    """The client sent its request body too slowly (a slow-client attack, or a dead link)."""

    status, code = 408, "request_timeout"


class Conflict(ServiceError):
    """The resource's state forbids the action (codes: not_ready, already_finished, not_finished, …)."""

    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    """The request body (or one part of it) crossed its size limit."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """The request is not of a content type this endpoint reads."""

    status, code = 415, "unsupported_media_type"


class InvalidRequest(ServiceError):
    """The request is well-formed but asks for something invalid (missing part, bad cursor, …)."""

    status, code = 422, "invalid_request"


class TooManyRequests(ServiceError):
    """The caller went over a rate or concurrency limit; `Retry-After` says when to try again."""

    status, code = 429, "rate_limited"


class InsufficientStorage(ServiceError):
    """The server's disk (or quota) is full: nothing was kept; retrying later may work."""

    status, code = 507, "insufficient_storage"


class Unavailable(ServiceError):
    """A dependency (database, broker, storage) cannot be reached right now; retrying later may work."""

    status, code = 503, "service_unavailable"
