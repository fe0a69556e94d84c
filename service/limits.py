"""Per-tenant abuse limits: a token bucket on `POST /jobs`, and quotas on unfinished jobs and stored bytes.

The buckets live in this API process's memory (no extra server for the embedded default). With N API
replicas behind a balancer a tenant gets up to N times the rate; the quotas are read from the database,
so they hold across replicas (two submissions racing past the same check can overshoot by one job each).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.db.session import session_scope
from service.errors import Forbidden, TooManyRequests
from service.jobs import repository
from service.jobs.states import is_terminal
from service.settings import Settings

__all__ = [
    "RateLimiter",
    "TokenBucket",
    "check_storage",
    "check_submit_quotas",
    "poll_headers",
    "rate_limited",
]

_MAX_BUCKETS = 10_000  # tenants remembered before full (idle) buckets are forgotten
_ACTIVE_RETRY_S = 30  # Retry-After when a tenant has too many unfinished jobs: about a short job's length


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `rate_per_s`; each submission takes one."""

    capacity: float
    rate_per_s: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Takes a token and returns 0, or returns the seconds until one will be there (taking none)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


@dataclass
class RateLimiter:
    """One token bucket per tenant, shared by this process's threads."""

    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, tenant: str) -> float:
        """Spends one of the tenant's tokens; returns 0, or the seconds to wait before the next try."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                if len(self._buckets) >= _MAX_BUCKETS:
                    self._forget_idle(now)
                bucket = TokenBucket(self.burst, self.per_minute / 60.0, float(self.burst), now)
                self._buckets[tenant] = bucket
            return bucket.take(now)

    def _forget_idle(self, now: float) -> None:
        """Drops buckets that have refilled completely: forgetting them changes nobody's allowance."""
        for tenant, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * bucket.rate_per_s >= bucket.capacity:
                del self._buckets[tenant]


def check_storage(settings: Settings, used: int, incoming: int) -> None:
    """Refuses (403) when the tenant's stored uploads plus `incoming` bytes exceed its quota."""
    limit = settings.max_stored_bytes_per_tenant
    if used + incoming > limit:
        raise Forbidden(f"your stored uploads would reach {used + incoming} bytes; the quota is {limit}. "
                        "Delete finished jobs (DELETE /jobs/{id}) to free space",
                        code="storage_quota_exceeded")


def check_submit_quotas(sessions: sessionmaker[Session], settings: Settings, tenant: str) -> None:
    """Before an upload is read: refuses a tenant at its unfinished-jobs (429) or storage (403) quota."""
    with session_scope(sessions) as session:
        unfinished = repository.count_unfinished_jobs(session, tenant=tenant)
        used = repository.stored_input_bytes(session, tenant=tenant)
    limit = settings.max_active_jobs_per_tenant
    if unfinished >= limit:
        raise TooManyRequests(f"you have {unfinished} unfinished jobs; the limit is {limit}. Wait for one to "
                              "finish or cancel one", code="too_many_active_jobs",
                              headers={"Retry-After": str(_ACTIVE_RETRY_S)})
    check_storage(settings, used, 0)


def rate_limited(wait_s: float) -> TooManyRequests:
    """The 429 for a tenant whose bucket is empty, with the whole seconds to wait."""
    seconds = max(1, math.ceil(wait_s))
    return TooManyRequests(f"too many job submissions; retry in {seconds} s", code="rate_limited",
                           headers={"Retry-After": str(seconds)})


def poll_headers(job: Job, settings: Settings) -> dict[str, str]:
    """Suggests when to poll an unfinished job again (`Retry-After` in seconds); nothing once it is final."""
    return {} if is_terminal(job.status) else {"Retry-After": str(settings.poll_interval_s)}
