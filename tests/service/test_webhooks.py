"""Webhooks: private targets refused at submit, one signed delivery per finished job, bounded backoff."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from service.db.models import utcnow
from service.errors import InvalidRequest
from service.webhooks.sender import Sender
from service.webhooks.signing import HEADER, sign, verify
from service.webhooks.targets import WEBHOOK_TARGET_REFUSED, check_target
from tests.service.conftest import CONFIG, Api
from tests.service.live import FakeWorker

pytestmark = pytest.mark.anyio

SECRET = "whsec_test"
HOOK = "http://127.0.0.1:9/hook"


class Receiver:
    """Stands in for the HTTP POST: records each call and answers the next queued status."""

    def __init__(self, *statuses: int) -> None:
        self.statuses, self.calls = list(statuses), list[tuple[str, bytes, dict[str, str]]]()

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """Records one POST and answers the next status (200 once they run out)."""
        self.calls.append((url, body, headers))
        return self.statuses.pop(0) if self.statuses else 200


class Clock:
    """A settable clock for the sender's retry schedule."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        """Returns the current fake time."""
        return self.now


def finished_job(api: Api, status: str = "failed", **config: Any) -> str:
    """Inserts a job with a webhook_url and takes it to `status` as a worker would."""
    worker = FakeWorker(api.context)
    job_id = worker.insert({**CONFIG, "webhook_url": HOOK, **config})
    epoch = worker.claim(job_id)
    worker.finish(job_id, epoch, status, error_code="invalid_config", error_message="no")
    return job_id


def sender(api: Api, post: Callable[..., int], clock: Clock | None = None) -> Sender:
    """The API's sender with a fake POST (and clock)."""
    return Sender(api.context.settings, api.context.jobs.sessions, post=post, clock=clock or utcnow)


def test_a_signature_verifies_only_for_its_body_secret_and_time() -> None:
    """The header is Stripe's scheme: a tampered body, another secret or an old timestamp fail."""
    body = b'{"id": "x"}'
    header = sign(SECRET, body, timestamp=1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert verify(SECRET, header, body, now=1_000_010)
    assert not verify(SECRET, header, body + b" ", now=1_000_010)
    assert not verify("whsec_other", header, body, now=1_000_010)
    assert not verify(SECRET, header, body, now=1_000_000 + 301)
    assert not verify(SECRET, "v1=abc", body)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/h", "http://169.254.169.254/latest/meta-data",
                                 "https://10.0.0.7/h", "http://192.168.1.1/h", "http://[::1]/h",
                                 "http://100.64.0.1/h", "http://localhost/h", "ftp://example.com/h",
                                 "http://user:pw@93.184.216.34/h"])
def test_private_and_odd_targets_are_refused(url: str) -> None:
    """Loopback, link-local (cloud metadata), private and shared ranges, non-http and credentials."""
    with pytest.raises(InvalidRequest) as refused:
        check_target(url, allow_private=False)
    assert refused.value.code == WEBHOOK_TARGET_REFUSED


def test_public_targets_and_allowed_private_ones_pass() -> None:
    """A public literal address passes; the operator setting lets a private one through."""
    check_target("https://93.184.216.34/hook", allow_private=False)
    check_target("http://127.0.0.1:8000/hook", allow_private=True)


async def test_submit_refuses_a_private_callback_with_a_code(make_api: Callable[..., Any]) -> None:
    """POST /jobs with a loopback webhook_url is a 422 webhook_target_refused; no job is created."""
    async with make_api(webhook_secret=SECRET) as api:
        response = await api.submit(config={**CONFIG, "webhook_url": HOOK})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == WEBHOOK_TARGET_REFUSED
        assert api.job_count() == 0


async def test_submit_needs_a_secret_to_sign_with(make_api: Callable[..., Any]) -> None:
    """Open mode without SECATEUR_WEBHOOK_SECRET: 422 webhook_secret_missing."""
    async with make_api(webhook_allow_private=True) as api:
        response = await api.submit(config={**CONFIG, "webhook_url": HOOK})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "webhook_secret_missing"


async def test_a_finished_job_is_delivered_once_signed_and_logged(make_api: Callable[..., Any]) -> None:
    """One POST of the job's JSON, verified with the secret; later sweeps send nothing; the log shows it."""
    async with make_api(webhook_allow_private=True, webhook_secret=SECRET) as api:
        response = await api.submit(config={**CONFIG, "webhook_url": HOOK})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        receiver = Receiver()
        assert sender(api, receiver).sweep() == 0  # queued: nothing to deliver yet
        worker = FakeWorker(api.context)
        worker.finish(job_id, worker.claim(job_id), "cancelled")
        assert sender(api, receiver).sweep() == 1
        assert sender(api, receiver).sweep() == 0
        [(url, body, headers)] = receiver.calls
        assert url == HOOK
        assert verify(SECRET, headers[HEADER], body)
        assert headers["Secateur-Event"] == "job.cancelled"
        sent = json.loads(body)
        assert sent["id"] == job_id
        assert sent["status"] == "cancelled"
        assert sent == (await api.client.get(f"/jobs/{job_id}")).json()  # exactly the job's JSON
        log = (await api.client.get(f"/jobs/{job_id}/deliveries")).json()
        assert log["webhook_url"] == HOOK
        [delivery] = log["deliveries"]
        assert delivery["id"] == headers["Secateur-Delivery"]
        assert (delivery["state"], delivery["attempts"]) == ("delivered", 1)
        assert delivery["log"][0]["status"] == 200


async def test_failures_back_off_exponentially_then_give_up(make_api: Callable[..., Any]) -> None:
    """A 503 is retried after backoff_s, then 2x backoff_s; past webhook_retry_for_s the delivery fails."""
    settings = {"webhook_allow_private": True, "webhook_secret": SECRET, "webhook_backoff_s": 10.0,
                "webhook_retry_for_s": 60.0}
    async with make_api(**settings) as api:
        job_id = finished_job(api)
        clock, receiver = Clock(), Receiver(503, 503, 503, 503)
        send = sender(api, receiver, clock)
        assert send.sweep() == 1
        assert send.sweep() == 0  # not due yet
        clock.now += timedelta(seconds=10)
        assert send.sweep() == 1
        clock.now += timedelta(seconds=10)
        assert send.sweep() == 0  # the second delay is 20 s
        clock.now += timedelta(seconds=10)
        assert send.sweep() == 1
        clock.now += timedelta(seconds=60)
        assert send.sweep() == 1  # the window has passed: this attempt is the last
        clock.now += timedelta(hours=1)
        assert send.sweep() == 0
        [delivery] = (await api.client.get(f"/jobs/{job_id}/deliveries")).json()["deliveries"]
        assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == ("failed", 4, 503)
        assert [entry["status"] for entry in delivery["log"]] == [503, 503, 503, 503]


async def test_another_tenants_deliveries_are_not_found(make_api: Callable[..., Any]) -> None:
    """The delivery log is scoped like the job: another tenant's job is a 404."""
    async with make_api(webhook_allow_private=True, webhook_secret=SECRET) as api:
        worker = FakeWorker(api.context)
        job_id = worker.insert({**CONFIG, "webhook_url": HOOK}, tenant="someone-else")
        response = await api.client.get(f"/jobs/{job_id}/deliveries")
        assert response.status_code == 404
