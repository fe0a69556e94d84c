"""The gate in front of `POST /jobs`, before a single body byte is read: replays first, then rate and quotas.

A retry that carries an `Idempotency-Key` this tenant already used is answered with the job the key
created, so a client retrying after a lost answer never meets its own quota, spends no rate budget and
uploads nothing twice. The key alone identifies the request: the body is not read, so a different body
under a used key also gets the original job (the answer says `Idempotent-Replayed: true`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated

import anyio
from fastapi import FastAPI, Header, Request

from service.api.deps import ContextDep, TenantDep
from service.db.models import Job
from service.limits import RateLimiter, check_submit_quotas, rate_limited
from service.settings import Settings

__all__ = ["Admission", "IdempotencyKey", "admit_submission"]

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255,
           description="a retry with the same key returns the job the first request created, unread"),
]


@dataclass(frozen=True)
class Admission:
    """What the gate decided: a replay of `earlier`, or a new submission (under `idempotency_key`)."""

    idempotency_key: str | None
    earlier: Job | None = None


def _limiter(app: FastAPI, settings: Settings) -> RateLimiter:
    """Returns the app's submission rate limiter, created on first use (runs on the event loop: no race)."""
    limiter: RateLimiter | None = getattr(app.state, "submit_limiter", None)
    if limiter is None:
        limiter = RateLimiter.from_settings(settings)
        app.state.submit_limiter = limiter
    return limiter


async def admit_submission(
    request: Request, context: ContextDep, tenant: TenantDep, idempotency_key: IdempotencyKey = None,
) -> Admission:
    """Answers a replay with its job; otherwise refuses a submission over the rate (429) or quotas."""
    if idempotency_key is not None:
        replay = partial(context.jobs.replay, tenant=tenant, idempotency_key=idempotency_key)
        earlier = await anyio.to_thread.run_sync(replay)
        if earlier is not None:
            return Admission(idempotency_key, earlier)
    limiter = _limiter(request.app, context.settings)
    wait_s = await anyio.to_thread.run_sync(limiter.take, tenant)  # Redis is a network round trip
    if wait_s > 0:
        raise rate_limited(wait_s)
    await anyio.to_thread.run_sync(check_submit_quotas, context.jobs.sessions, context.settings, tenant)
    return Admission(idempotency_key)
