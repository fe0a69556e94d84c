"""Request dependencies: the app's wired services and the caller's tenant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from service.auth.service import KeyService
from service.errors import ServiceError, TooManyRequests, Unauthorized, Unavailable
from service.jobs.service import JobService
from service.limits import FairShares
from service.settings import Settings
from service.storage.base import ObjectStore

__all__ = [
    "OPEN_TENANT",
    "AppContext",
    "ContextDep",
    "CredentialsDep",
    "JobsDep",
    "TenantDep",
    "get_context",
    "get_jobs",
    "get_tenant",
    "still_authorized",
    "stream_shares",
    "validation_shares",
]

OPEN_TENANT = "public"


@dataclass(frozen=True)
class AppContext:
    """Everything the routes need, built once by `create_app` from the settings."""

    settings: Settings
    engine: Engine
    store: ObjectStore
    celery: Celery
    jobs: JobService


def get_context(request: Request) -> AppContext:
    """Returns the app's context."""
    context: AppContext = request.app.state.context
    return context


def get_jobs(context: Annotated[AppContext, Depends(get_context)]) -> JobService:
    """Returns the job service."""
    return context.jobs


# Declares the scheme in OpenAPI; it never refuses by itself (get_tenant gives one 401 for every failure).
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="`Authorization: Bearer sk_<id>_<secret>` (from `secateur keys create`)")


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_tenant(context: Annotated[AppContext, Depends(get_context)], credentials: CredentialsDep) -> str:
    """Returns the caller's tenant: "public" when auth is open, else the tenant of its valid API key."""
    if context.settings.auth == "open":
        return OPEN_TENANT
    keys = KeyService(context.jobs.sessions)
    return keys.authenticate(credentials.credentials if credentials is not None else None)


def still_authorized(context: AppContext, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """Tells whether the credentials a long request opened with are still good (a key may be revoked)."""
    try:
        get_tenant(context, credentials)
    except Unauthorized:
        return False
    return True


def _shares(request: Request, name: str, total: int, per_tenant: int,
            refuse: Callable[[bool], ServiceError]) -> FairShares:
    """Returns the app's named FairShares, created on first use (on the event loop: no race)."""
    shares: FairShares | None = getattr(request.app.state, name, None)
    if shares is None:
        shares = FairShares(total, per_tenant, refuse)
        setattr(request.app.state, name, shares)
    return shares


def _validation_refusal(tenant_full: bool) -> ServiceError:
    """429 when the tenant's own checks fill its share (its burst), 503 when every slot is busy."""
    if tenant_full:
        return TooManyRequests("your other uploads are still being checked; retry when they are done",
                               code="validation_busy", headers={"Retry-After": "10"})
    return Unavailable("too many uploads are being checked right now; retry shortly", code="validation_busy",
                       headers={"Retry-After": "10"})


def validation_shares(request: Request) -> FairShares:
    """The per-tenant and global slots for submit-time upload checks (one tenant's burst waits alone)."""
    settings: Settings = get_context(request).settings
    return _shares(request, "validation_shares", settings.sandbox_concurrency,
                   settings.sandbox_concurrency_per_tenant, _validation_refusal)


def _stream_refusal(tenant_full: bool) -> ServiceError:
    """429: the tenant (or the whole process) has as many event streams open as allowed."""
    whose = "you have" if tenant_full else "the server has"
    return TooManyRequests(f"{whose} as many event streams open as allowed; close one, or poll "
                           "GET /jobs/{id}", code="too_many_streams", headers={"Retry-After": "5"})


def stream_shares(request: Request) -> FairShares:
    """The per-tenant and global caps on open event streams of this process."""
    settings: Settings = get_context(request).settings
    return _shares(request, "stream_shares", settings.max_streams, settings.max_streams_per_tenant,
                   _stream_refusal)


ContextDep = Annotated[AppContext, Depends(get_context)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
TenantDep = Annotated[str, Depends(get_tenant)]
