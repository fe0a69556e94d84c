"""Idempotent retries: the `Idempotency-Key` is looked up before rate limit, quotas and the body.

A client whose answer was lost retries with the same key; with its quota now full (by that very job) and
its rate budget spent, it must still get its job back, without uploading anything a second time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from tests.security.conftest import SecureApi

pytestmark = pytest.mark.anyio

AsyncApiFactory = Callable[..., AbstractAsyncContextManager[SecureApi]]
KEY = {"Idempotency-Key": "retry-after-a-lost-answer"}


async def test_a_retry_at_full_quota_and_rate_gets_the_original_job(make_secure_api: AsyncApiFactory) -> None:
    limits = {"max_active_jobs_per_tenant": 1, "submit_burst": 2, "submit_rate_per_minute": 1.0}
    async with make_secure_api(**limits) as api:
        first = await api.submit(headers=KEY)
        assert first.status_code == 202, first.text
        job = first.json()
        fresh = await api.submit(headers={"Idempotency-Key": "another-request"})  # the rate's 2nd and last
        assert (fresh.status_code, fresh.json()["error"]["code"]) == (429, "too_many_active_jobs")
        for _ in range(3):
            retry = await api.submit(headers=KEY)
            assert retry.status_code == 202, retry.text
            assert retry.json()["id"] == job["id"]
            assert retry.json()["created_at"] == job["created_at"]
            assert retry.headers["idempotent-replayed"] == "true"
            assert retry.headers["location"] == f"/jobs/{job['id']}"
        spent = await api.submit()
        assert (spent.status_code, spent.json()["error"]["code"]) == (429, "rate_limited")  # no key: no pass
        assert len([p for p in api.objects() if p.parent.name == "inputs"]) == 2  # the first job's only


async def test_a_replay_is_answered_without_reading_its_body(secure_api: SecureApi) -> None:
    first = await secure_api.submit(headers=KEY)
    assert first.status_code == 202, first.text
    pulled: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        """A body that records every chunk the server asks for."""
        for chunk in (b"--b\r\n", b"never read"):
            pulled.append(chunk)
            yield chunk

    headers = {**secure_api.auth("owner"), **KEY, "Content-Type": "multipart/form-data; boundary=b"}
    retry = await secure_api.client.post("/jobs", content=body(), headers=headers)
    assert (retry.status_code, retry.json()["id"]) == (202, first.json()["id"])
    assert pulled == []


async def test_keys_are_per_tenant(secure_api: SecureApi) -> None:
    """Another tenant's use of the same key is a new request: keys never reveal or share a job."""
    mine = await secure_api.submit(headers=KEY)
    theirs = await secure_api.submit(headers=KEY, principal="other")
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
