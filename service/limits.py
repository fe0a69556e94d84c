"""Per-tenant abuse limits: a rate limit on `POST /jobs`, quotas on unfinished jobs and stored bytes, and
fair shares of what one API process can do at once (upload checks, open event streams).

The rate limit is a moving window (at most `submit_burst` submissions in any `submit_burst /
submit_rate_per_minute` minutes) kept by the `limits` library in the storage `rate_limit_url` names:
Redis when the broker is Redis, so every API replica spends one budget per tenant, else this process's
memory (the embedded default needs no server). When that storage fails the limit is skipped, logged, and
submissions go on: an outage of the limiter must not stop the service. The quotas are read from the
database, so they hold across replicas: the unfinished-jobs quota is checked before the body is read (a
cheap early refusal) and again in the transaction that records the job, under a per-tenant lock, so
concurrent submissions can never leave more unfinished jobs than the quota.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.db.session import session_scope
from service.errors import Forbidden, ServiceError, TooManyRequests
from service.jobs import repository
from service.jobs.states import is_terminal
from service.settings import Settings

__all__ = [
    "FairShares",
    "RateLimiter",
    "check_storage",
    "check_submit_quotas",
    "check_unfinished_quota",
    "poll_headers",
    "rate_limited",
]

log = logging.getLogger(__name__)
_ACTIVE_RETRY_S = 30  # Retry-After when a tenant has too many unfinished jobs: about a short job's length


@dataclass(frozen=True)
class RateLimiter:
    """Submissions per tenant in a moving window, counted in memory or in Redis (shared by replicas)."""

    item: RateLimitItem
    strategy: MovingWindowRateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """Builds the limiter `submit_burst` / `submit_rate_per_minute` describe, over `rate_limit_url`."""
        window_s = max(1, round(settings.submit_burst * 60.0 / settings.submit_rate_per_minute))
        item = RateLimitItemPerSecond(settings.submit_burst, window_s, namespace="secateur-submit")
        options: dict[str, float] = {}
        if settings.rate_limit_url.startswith(("redis://", "rediss://")):
            timeout = settings.broker_timeout_s  # a dead Redis costs a submission this much, no more
            options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        storage = storage_from_string(settings.rate_limit_url, wrap_exceptions=True, **options)
        return cls(item=item, strategy=MovingWindowRateLimiter(storage))

    def take(self, tenant: str) -> float:
        """Counts one submission of the tenant; returns 0, or the seconds until the window has room."""
        try:
            if self.strategy.hit(self.item, tenant):
                return 0.0
            reset_at = self.strategy.get_window_stats(self.item, tenant).reset_time
        except StorageError as exc:
            log.warning("rate limit skipped: its storage failed: %s", exc)
            return 0.0
        return max(reset_at - time.time(), 0.0)


def check_storage(settings: Settings, used: int, incoming: int) -> None:
    """Refuses (403) when the tenant's stored uploads plus `incoming` bytes exceed its quota."""
    limit = settings.max_stored_bytes_per_tenant
    if used + incoming > limit:
        raise Forbidden(f"your stored uploads would reach {used + incoming} bytes; the quota is {limit}. "
                        "Delete finished jobs (DELETE /jobs/{id}) to free space",
                        code="storage_quota_exceeded")


def _check_unfinished(settings: Settings, unfinished: int) -> None:
    """Refuses (429) a tenant that already has as many unfinished jobs as its quota allows."""
    limit = settings.max_active_jobs_per_tenant
    if unfinished >= limit:
        raise TooManyRequests(f"you have {unfinished} unfinished jobs; the limit is {limit}. Wait for one to "
                              "finish or cancel one", code="too_many_active_jobs",
                              headers={"Retry-After": str(_ACTIVE_RETRY_S)})


def check_submit_quotas(sessions: sessionmaker[Session], settings: Settings, tenant: str) -> None:
    """Before an upload is read: refuses a tenant at its unfinished-jobs (429) or storage (403) quota."""
    with session_scope(sessions) as session:
        unfinished = repository.count_unfinished_jobs(session, tenant=tenant)
        used = repository.stored_input_bytes(session, tenant=tenant)
    _check_unfinished(settings, unfinished)
    check_storage(settings, used, 0)


def check_unfinished_quota(session: Session, settings: Settings, tenant: str) -> None:
    """In the transaction that records a job: takes the tenant's submit lock, then counts (429 at the quota).

    The lock (held until commit) makes concurrent submissions of one tenant count one after another, so
    each sees the jobs the others recorded.
    """
    repository.lock_tenant_submissions(session, tenant=tenant)
    _check_unfinished(settings, repository.count_unfinished_jobs(session, tenant=tenant))


class FairShares:
    """At most `total` holders at once, and at most `per_tenant` of them for any one tenant.

    Kept on the event loop (no thread waits for a share): a tenant over its share waits in its own line,
    so one tenant's burst never takes what is left for the others. Not thread-safe: use from async code.
    """

    def __init__(self, total: int, per_tenant: int, refuse: Callable[[bool], ServiceError]) -> None:
        self.total, self.per_tenant = total, min(per_tenant, total)
        self.refuse = refuse  # builds the refusal; its argument tells whether the tenant's own share is full
        self.held: Counter[str] = Counter()
        self._freed = anyio.Event()

    @property
    def used(self) -> int:
        """How many shares are held now, over all tenants."""
        return sum(self.held.values())

    def _free_for(self, tenant: str) -> bool:
        """Tells whether `tenant` may take a share now."""
        return self.held[tenant] < self.per_tenant and self.used < self.total

    @asynccontextmanager
    async def hold(self, tenant: str, wait_s: float) -> AsyncIterator[None]:
        """Holds one share for the block, waiting up to `wait_s` for one; else raises the refusal."""
        with anyio.move_on_after(wait_s):
            while not self._free_for(tenant):
                await self._freed.wait()
        give_back = self.take(tenant)
        try:
            yield
        finally:
            give_back()

    def take(self, tenant: str) -> Callable[[], None]:
        """Takes a share now or raises the refusal; returns the call that gives it back."""
        if not self._free_for(tenant):
            raise self.refuse(self.held[tenant] >= self.per_tenant)
        self.held[tenant] += 1
        return lambda: self.release(tenant)

    def release(self, tenant: str) -> None:
        """Gives a share back and wakes every waiter (each re-checks its own line)."""
        self.held[tenant] -= 1
        if self.held[tenant] <= 0:
            del self.held[tenant]
        freed, self._freed = self._freed, anyio.Event()
        freed.set()


def rate_limited(wait_s: float) -> TooManyRequests:
    """The 429 for a tenant whose bucket is empty, with the whole seconds to wait."""
    seconds = max(1, math.ceil(wait_s))
    return TooManyRequests(f"too many job submissions; retry in {seconds} s", code="rate_limited",
                           headers={"Retry-After": str(seconds)})


def poll_headers(job: Job, settings: Settings) -> dict[str, str]:
    """Suggests when to poll an unfinished job again (`Retry-After` in seconds); nothing once it is final."""
    return {} if is_terminal(job.status) else {"Retry-After": str(settings.poll_interval_s)}
