"""Fair shares: one tenant's burst of slow upload checks does not delay another tenant, and the
unfinished-jobs quota holds under a burst of concurrent submissions (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Job
from service.db.session import session_scope
from service.errors import TooManyRequests
from service.jobs import admission, repository
from service.jobs import service as job_service
from service.jobs.states import TERMINAL
from service.limits import FairShares
from tests.integration.conftest import postgres_url  # noqa: F401  (the real-PostgreSQL fixture)
from tests.security.conftest import FIGURES, SecureApi

pytestmark = pytest.mark.anyio
AsyncApiFactory = Callable[..., AbstractAsyncContextManager[SecureApi]]

SLOW_CHECK_S = 2.0  # how long each upload check of the bursting tenant takes
BURST = 4  # its concurrent submissions
BOUND_S = 0.5 * SLOW_CHECK_S  # the stated bound on the delay: another tenant never waits for those checks


def _slow_checks_for(tenant: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes every upload check of `tenant` take SLOW_CHECK_S (as a slow-to-validate archive does);
    returns a one-item list counting those checks running now."""
    real = admission.admit_uploads
    running = [0]

    def slow(**kwargs: Any) -> str:
        if kwargs["tenant"] == tenant:
            running[0] += 1
            time.sleep(SLOW_CHECK_S)
            running[0] -= 1
        return real(**kwargs)

    monkeypatch.setattr(job_service, "admit_uploads", slow)
    return running


async def _other_tenant_wait_s(api: SecureApi, running: list[int], slots: int) -> tuple[float, list[int]]:
    """Starts acme's burst and, once it holds `slots` checks, times globex's one submission; returns its
    seconds and acme's statuses."""
    statuses: list[int] = []

    async def bursting() -> None:
        statuses.append((await api.submit()).status_code)

    async with anyio.create_task_group() as group:
        for _ in range(BURST):
            group.start_soon(bursting)
        with anyio.fail_after(SLOW_CHECK_S):
            while running[0] < slots:  # the burst is in: its checks run, the rest of it waits
                await anyio.sleep(0.01)
        started = time.monotonic()
        other = await api.submit(principal="other")
        waited = time.monotonic() - started
        assert other.status_code == 202, other.text
    return waited, statuses


async def test_one_tenants_burst_does_not_delay_another_tenant(make_secure_api: AsyncApiFactory,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    running = _slow_checks_for("acme", monkeypatch)
    async with make_secure_api(validate_uploads=False, sandbox_concurrency=2,
                               sandbox_concurrency_per_tenant=1) as api:
        for _ in range(2):  # the second one: the same submission, warmed up, with no burst in flight
            started = time.monotonic()
            assert (await api.submit(principal="other")).status_code == 202
            alone_s = time.monotonic() - started
        fair_s, statuses = await _other_tenant_wait_s(api, running, slots=1)
    assert statuses == [202] * BURST  # the burst waited in its own line, and was served
    async with make_secure_api(validate_uploads=False, sandbox_concurrency=2,
                               sandbox_concurrency_per_tenant=2) as api:  # one global pool, as before
        shared_s, _ = await _other_tenant_wait_s(api, running, slots=2)
    FIGURES.append(f"fair shares: with {BURST} slow ({SLOW_CHECK_S:g} s) checks of one tenant in flight, "
                   f"another tenant's submission took {fair_s:.2f} s ({alone_s:.2f} s with none; bound on "
                   f"the delay {BOUND_S:g} s); with one shared pool it took {shared_s:.2f} s")
    assert fair_s - alone_s < BOUND_S
    assert shared_s >= SLOW_CHECK_S * 0.8  # the test can tell: a shared pool made it wait


async def test_a_tenant_over_its_share_waits_then_gets_a_429() -> None:
    def refuse(tenant_full: bool) -> TooManyRequests:
        return TooManyRequests("busy", code="tenant" if tenant_full else "total")

    shares = FairShares(total=2, per_tenant=1, refuse=refuse)
    async with shares.hold("a", 0.1):
        with pytest.raises(TooManyRequests) as own:
            async with shares.hold("a", 0.1):
                pass
        assert own.value.code == "tenant"
        async with shares.hold("b", 0.1):
            with pytest.raises(TooManyRequests) as total:
                shares.take("c")
            assert total.value.code == "total"
    assert shares.used == 0
    give_back = shares.take("a")  # released shares are free again, and a waiter is woken
    async with anyio.create_task_group() as group:
        group.start_soon(_hold_briefly, shares)
        await anyio.sleep(0.05)
        give_back()
    assert shares.used == 0


async def _hold_briefly(shares: FairShares) -> None:
    """Waits for tenant a's share (held by the caller) and holds it for a moment."""
    async with shares.hold("a", 5.0):
        await anyio.sleep(0.01)


def _unfinished(api: SecureApi, tenant: str) -> int:
    """The tenant's unfinished jobs in the database."""
    with session_scope(api.context.jobs.sessions) as session:
        stmt = select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.not_in(TERMINAL))
        return int(session.execute(stmt).scalar_one())


async def _race(api: SecureApi, submissions: int) -> list[int]:
    """Sends `submissions` POST /jobs of one tenant at once; returns their statuses."""
    statuses: list[int] = []

    async def one() -> None:
        response = await api.submit()
        assert response.status_code in (202, 429), response.text
        statuses.append(response.status_code)

    async with anyio.create_task_group() as group:
        for _ in range(submissions):
            group.start_soon(one)
    return statuses


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_concurrent_submissions_never_pass_the_unfinished_jobs_quota(
    make_secure_api: AsyncApiFactory, request: pytest.FixtureRequest, database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quota, submissions = 4, 20
    real_insert = repository.create_job

    def slow_insert(session: Session, *, job: Job) -> Job:
        time.sleep(0.1)  # a slow database widens the window between counting and inserting
        return real_insert(session, job=job)

    monkeypatch.setattr(repository, "create_job", slow_insert)
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else ""
    # Shares as wide as the burst: one process's per-tenant share would serialize the submissions itself;
    # this stands for many API replicas, where only the database's lock does.
    async with make_secure_api(validate_uploads=False, max_active_jobs_per_tenant=quota, database_url=url,
                               sandbox_concurrency=submissions,
                               sandbox_concurrency_per_tenant=submissions) as api:
        statuses = await _race(api, submissions)
        unfinished = _unfinished(api, "acme")
    FIGURES.append(f"quota race ({database}): {submissions} concurrent POST /jobs, a quota of {quota}: "
                   f"{statuses.count(202)} accepted, {statuses.count(429)} refused (429), {unfinished} "
                   "unfinished jobs")
    assert unfinished <= quota
    assert statuses.count(202) == unfinished == quota
