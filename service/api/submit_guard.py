"""The gate in front of `POST /jobs`: rate limit and quotas, checked before a single body byte is read."""

from __future__ import annotations

import anyio
from fastapi import FastAPI, Request

from service.api.deps import ContextDep, TenantDep
from service.limits import RateLimiter, check_submit_quotas, rate_limited

__all__ = ["admit_submission"]


def _limiter(app: FastAPI, per_minute: float, burst: int) -> RateLimiter:
    """Returns the app's submission rate limiter, created on first use (runs on the event loop: no race)."""
    limiter: RateLimiter | None = getattr(app.state, "submit_limiter", None)
    if limiter is None:
        limiter = RateLimiter(per_minute=per_minute, burst=burst)
        app.state.submit_limiter = limiter
    return limiter


async def admit_submission(request: Request, context: ContextDep, tenant: TenantDep) -> None:
    """Refuses a submission over the tenant's rate (429 + Retry-After) or quotas, before its upload."""
    settings = context.settings
    wait_s = _limiter(request.app, settings.submit_rate_per_minute, settings.submit_burst).take(tenant)
    if wait_s > 0:
        raise rate_limited(wait_s)
    await anyio.to_thread.run_sync(check_submit_quotas, context.jobs.sessions, settings, tenant)
