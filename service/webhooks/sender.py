"""The sender: a loop in each API process that turns finished jobs with a `webhook_url` into deliveries
and POSTs them, signed, retrying with exponential backoff for a bounded time.

Why the API process and not the reaper: the reaper also runs in every worker parent, and GPU workers
need no route to users' hosts (nor should a job's process be able to reach them); the API already talks
to the outside. Several API replicas are safe: a delivery row per job is unique, and each attempt is
made under a lease taken by a conditional UPDATE.

Everything lives in the database, so a delivery survives an API restart: a job that ended while no API
ran is found by its `finished_at` (the first sweep after a start looks back `webhook_retry_for_s`).
Delivery is at least once: an API killed between a receiver's 2xx and recording it sends again, with the
same `Secateur-Delivery` id, so receivers drop duplicates by that id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import WebhookDelivery, utcnow
from service.db.session import session_scope
from service.errors import InvalidRequest
from service.jobs import repository as jobs_repository
from service.jobs.schemas import job_out
from service.settings import Settings
from service.webhooks import repository
from service.webhooks.signing import HEADER, sign
from service.webhooks.targets import check_target
from service.webhooks.tenant_secrets import secret_for

__all__ = ["Sender", "start_sender"]

BATCH = 50  # jobs discovered, or deliveries claimed, per sweep
LOOKBACK_OVERLAP = timedelta(minutes=5)  # workers' clocks differ: rescan this far behind the last sweep
MAX_LOG = 50  # attempts kept in a delivery's log (the newest)
log = logging.getLogger(__name__)

Post = Callable[[str, bytes, dict[str, str], float], int]


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POSTs `body` without following redirects; returns the status code."""
    response = httpx.post(url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False)
    return response.status_code


class Sender:
    """Finds finished jobs that want a callback and delivers them (module docstring)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, post: Post = _post,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings, self.sessions, self.post, self.clock = settings, sessions, post, clock
        self._scanned_at: datetime | None = None

    def sweep(self) -> int:
        """Records new deliveries, then makes every due attempt; returns how many attempts were made."""
        self.discover()
        return self.deliver_due()

    def discover(self) -> int:
        """Creates a pending delivery for each newly finished job with a webhook_url; returns how many."""
        now = self.clock()
        window = timedelta(seconds=self.settings.webhook_retry_for_s)
        since = now - window if self._scanned_at is None else max(now - window,
                                                                    self._scanned_at - LOOKBACK_OVERLAP)
        created = 0
        with session_scope(self.sessions) as session:
            jobs = repository.finished_without_delivery(session, since=since, limit=BATCH)
            found = [(job.id, job.tenant, str(job.config["webhook_url"]), job.status) for job in jobs]
        for job_id, tenant, url, status in found:
            try:
                with session_scope(self.sessions) as session:
                    repository.create_delivery(session, delivery=WebhookDelivery(
                        job_id=job_id, tenant=tenant, url=url, event=f"job.{status}", state="pending",
                        attempts=0, next_attempt_at=now, log=[], created_at=now))
                created += 1
            except IntegrityError:
                continue  # another API replica recorded it first
        if len(found) < BATCH:  # else the next sweep continues from the same point
            self._scanned_at = now
        return created

    def deliver_due(self) -> int:
        """Claims the due deliveries and makes one attempt at each; returns how many."""
        now = self.clock()
        lease_until = now + timedelta(seconds=2 * self.settings.webhook_timeout_s + 10)
        with session_scope(self.sessions) as session:
            due = repository.claim_due(session, now=now, lease_until=lease_until, limit=BATCH)
            claimed = [(d.id, d.job_id, d.tenant, d.url, d.event, d.attempts, list(d.log), d.created_at)
                       for d in due]
        for delivery_id, job_id, tenant, url, event, attempts, attempt_log, created_at in claimed:
            self._attempt(delivery_id, job_id, tenant, url, event, attempts, attempt_log, created_at,
                          lease_until)
        return len(claimed)

    def _attempt(self, delivery_id: str, job_id: str, tenant: str, url: str, event: str, attempts: int,
                 attempt_log: list[dict[str, Any]], created_at: datetime, lease_until: datetime) -> None:
        """POSTs the job's JSON once and records the outcome and the next attempt's time."""
        with session_scope(self.sessions) as session:
            job = jobs_repository.get_job_any_tenant(session, job_id=job_id)
            secret = secret_for(session, self.settings, tenant)
            body = job_out(job, self.clock()).model_dump_json().encode() if job is not None else b""
        status, error = None, None
        started = time.perf_counter()
        if job is None:
            error = "the job was deleted before its callback was delivered"
        elif secret is None:
            error = "the tenant has no webhook secret to sign with"
        else:
            try:
                check_target(url, allow_private=self.settings.webhook_allow_private)  # re-resolved now
                headers = {"Content-Type": "application/json", "User-Agent": "Secateur-Webhook/1",
                           "Secateur-Delivery": delivery_id, "Secateur-Event": event,
                           HEADER: sign(secret, body)}
                status = self.post(url, body, headers, self.settings.webhook_timeout_s)
                error = None if 200 <= status < 300 else f"the receiver answered HTTP {status}"
            except InvalidRequest as exc:
                error = exc.message
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        now = self.clock()
        entry = {"at": now.isoformat(), "status": status, "error": error,
                 "duration_ms": round((time.perf_counter() - started) * 1000, 1)}
        values: dict[str, Any] = {"attempts": attempts + 1, "last_status": status, "last_error": error,
                                  "log": [*attempt_log, entry][-MAX_LOG:], "leased_until": None}
        if error is None:
            values |= {"state": "delivered", "delivered_at": now}
        elif job is None or now - created_at >= timedelta(seconds=self.settings.webhook_retry_for_s):
            values |= {"state": "failed"}
        else:
            delay = min(self.settings.webhook_backoff_s * 2 ** attempts, self.settings.webhook_max_backoff_s)
            values |= {"next_attempt_at": now + timedelta(seconds=delay)}
        with session_scope(self.sessions) as session:
            if not repository.record_attempt(session, delivery_id=delivery_id, lease_until=lease_until,
                                             values=values):
                log.warning("webhook delivery %s (job %s): lease lost before the outcome was recorded",
                            delivery_id, job_id)
        log.info("job %s: webhook %s to %s: %s", job_id, event, url, "delivered" if error is None else error)

    def run(self, stop: threading.Event) -> None:
        """Sweeps every `webhook_interval_s` until `stop` is set; a database outage is logged, not fatal."""
        while not stop.is_set():
            try:
                self.sweep()
            except (DBAPIError, PoolTimeout) as exc:
                log.warning("webhook sender: database unavailable (%s); retrying", type(exc).__name__)
            except Exception:  # a bug must not stop every later callback
                log.exception("webhook sender: sweep failed")
            stop.wait(self.settings.webhook_interval_s)


def start_sender(settings: Settings, sessions: sessionmaker[Session]) -> threading.Event | None:
    """Starts this process's sender thread when the settings enable it; returns the event that stops it."""
    if not settings.webhook_sender_enabled:
        return None
    stop = threading.Event()
    threading.Thread(target=Sender(settings, sessions).run, args=(stop,), name="secateur-webhooks",
                     daemon=True).start()
    return stop
