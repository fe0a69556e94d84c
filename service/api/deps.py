"""Request dependencies: the app's wired services and the caller's tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from service.auth.service import KeyService
from service.jobs.service import JobService
from service.settings import Settings
from service.storage.base import ObjectStore

__all__ = [
    "OPEN_TENANT",
    "AppContext",
    "ContextDep",
    "JobsDep",
    "TenantDep",
    "get_context",
    "get_jobs",
    "get_tenant",
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


def get_tenant(
    context: Annotated[AppContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Returns the caller's tenant: "public" when auth is open, else the tenant of its valid API key."""
    if context.settings.auth == "open":
        return OPEN_TENANT
    keys = KeyService(context.jobs.sessions)
    return keys.authenticate(credentials.credentials if credentials is not None else None)


ContextDep = Annotated[AppContext, Depends(get_context)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
TenantDep = Annotated[str, Depends(get_tenant)]
