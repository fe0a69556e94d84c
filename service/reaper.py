"""The reaper: recovers jobs whose worker died and wake-ups that got lost; removes finished jobs' checkpoints.

One sweep, every `reaper_interval_s`, in every API process and every worker parent (several replicas are
safe: see `service.jobs.recovery`):
- a `running` job whose heartbeat is older than `stale_after_s` goes back to `queued` (epoch bumped, so the
  silent worker's later writes are refused) and is woken again, until it has used `max_attempts` attempts;
  then it ends `failed` with `worker_lost`. A `cancelling` one ends `cancelled`.
- a `queued` job nobody claimed for `wakeup_resend_after_s` gets its wake-up again (duplicates are harmless:
  the claim is a conditional UPDATE).
- a finished job still pointing at a checkpoint has its checkpoint objects deleted.
After the database was unreachable, leases are not judged for `stale_after_s`: the workers could not
heartbeat either, and must get the chance to renew before anyone is declared dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from celery import Celery
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import utcnow
from service.db.session import session_scope
from service.jobs import recovery, repository
from service.queue import send_wakeup
from service.settings import Settings
from service.storage import ObjectStore, StorageError
from service.storage.keys import checkpoint_key

__all__ = ["WORKER_LOST", "Reaper", "Sweep", "delete_checkpoints", "start_reaper"]

WORKER_LOST = "worker_lost"
BATCH = 100  # rows per query: a sweep stays short even after a long outage
log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """What one sweep did (job ids per action), for logs and tests."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)


def delete_checkpoints(store: ObjectStore, tenant: str, job_id: str) -> None:
    """Deletes every checkpoint object of a job (every attempt's keys live in the checkpoint key's folder)."""
    store.delete_prefix(checkpoint_key(tenant, job_id).rsplit("/", 1)[0] + "/")


class Reaper:
    """Sweeps the jobs table for dead leases, lost wake-ups and leftover checkpoints (module docstring)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: ObjectStore,
                 wake: Callable[[str], bool], actor: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.sessions, self.store = settings, sessions, store
        self.wake, self.actor, self.clock = wake, actor, clock
        self._db_back_at = -float("inf")  # when the database answered again after an outage
        self._db_down = False
        self._broker_lost = False  # a wake-up could not be sent: the broker may have lost queued ones

    def sweep(self) -> Sweep:
        """Runs one pass; raises what the database or store raised (the loop logs it and tries again)."""
        done = Sweep()
        if self.judges_leases():
            self._reap_leases(done)
        self._resend_wakeups(done)
        self._clean_checkpoints(done)
        sent = [self.wake(job_id) for job_id in done.requeued + done.resent]
        if sent:
            self._broker_lost = not all(sent)
        if any((done.requeued, done.failed, done.cancelled, done.resent)):
            log.info("reaper %s: requeued %s, failed %s, cancelled %s, re-woke %s", self.actor, done.requeued,
                     done.failed, done.cancelled, done.resent)
        return done

    def judges_leases(self) -> bool:
        """Tells whether stale leases may be reaped now: not during an outage, nor right after one."""
        return not self._db_down and self.clock() - self._db_back_at >= self.settings.stale_after_s

    def _reap_leases(self, done: Sweep) -> None:
        """Requeues, fails or cancels jobs whose heartbeat is stale (one transaction, rows locked)."""
        cutoff = utcnow() - timedelta(seconds=self.settings.stale_after_s)
        with session_scope(self.sessions) as session:
            for job in recovery.stale_leases(session, cutoff=cutoff, limit=BATCH):
                detail = {"attempt": job.attempt, "worker": job.worker_id,
                          "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None}
                if job.status == "cancelling":
                    if recovery.end_lost(session, job_id=job.id, epoch=job.epoch, status="cancelling",
                                         cutoff=cutoff, new_status="cancelled"):
                        done.cancelled.append(job.id)
                        kind = "cancelled"
                    else:
                        continue
                elif job.attempt >= job.max_attempts:
                    message = (f"the worker running this job stopped responding {job.attempt} times "
                               "(killed, out of memory or its machine lost); not retried again")
                    if not recovery.end_lost(session, job_id=job.id, epoch=job.epoch, status="running",
                                             cutoff=cutoff, new_status="failed", error_code=WORKER_LOST,
                                             error_message=message):
                        continue
                    done.failed.append(job.id)
                    kind, detail = "failed", {**detail, "code": WORKER_LOST}
                elif recovery.requeue_lost(session, job_id=job.id, epoch=job.epoch, cutoff=cutoff):
                    done.requeued.append(job.id)
                    kind, detail = "requeued", {**detail, "reason": "heartbeat_stale"}
                else:
                    continue
                repository.record_event(session, job_id=job.id, epoch=job.epoch, kind=kind, actor=self.actor,
                                        detail=detail)

    def _resend_wakeups(self, done: Sweep) -> None:
        """Marks queued jobs nobody claimed in time, to wake them again after the commit.

        Re-sends back off per job, unless a send failed lately: a broker that was down may have come back
        empty (Redis without persistence), so then every waiting job is woken again.
        """
        with session_scope(self.sessions) as session:
            due = recovery.take_unclaimed(session, now=utcnow(), after_s=self.settings.wakeup_resend_after_s,
                                          limit=BATCH, backoff=not self._broker_lost)
            for job_id, epoch in due:
                done.resent.append(job_id)
                repository.record_event(session, job_id=job_id, epoch=epoch, kind="wakeup_resent",
                                        actor=self.actor)

    def _clean_checkpoints(self, done: Sweep) -> None:
        """Deletes finished jobs' checkpoint objects, then their pointers (a failed delete is retried)."""
        with session_scope(self.sessions) as session:
            leftovers = recovery.finished_with_checkpoints(session, limit=BATCH)
        for job_id, tenant in leftovers:
            delete_checkpoints(self.store, tenant, job_id)
            with session_scope(self.sessions) as session:
                if recovery.clear_checkpoint(session, job_id=job_id):
                    done.cleaned.append(job_id)

    def run(self, stop: threading.Event) -> None:
        """Sweeps every `reaper_interval_s` until `stop` is set."""
        while not stop.is_set():
            self.tick()
            stop.wait(self.settings.reaper_interval_s)

    def tick(self) -> None:
        """One sweep of the loop: an unreachable database or store is logged and noted, never fatal."""
        try:
            self.sweep()
        except (DBAPIError, PoolTimeout) as exc:
            if not self._db_down:
                log.warning("reaper %s: database unavailable (%s); retrying", self.actor, type(exc).__name__)
            self._db_down = True
            return
        except StorageError as exc:
            log.warning("reaper %s: object store unavailable (%s); retrying", self.actor, exc)
        except Exception:  # a bug must not kill the thread that keeps jobs alive
            log.exception("reaper %s: sweep failed", self.actor)
        if self._db_down:
            self._db_down, self._db_back_at = False, self.clock()
            log.info("reaper %s: database back; leases judged again in %.0f s", self.actor,
                     self.settings.stale_after_s)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """Runs the loop in a daemon thread; returns it and the event that stops it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="secateur-reaper", daemon=True)
        thread.start()
        return thread, stop


def start_reaper(settings: Settings, sessions: sessionmaker[Session], store: ObjectStore, celery: Celery,
                 actor: str) -> threading.Event | None:
    """Starts this process's reaper thread when the settings enable it; returns the event that stops it."""
    if not settings.reaper_enabled:
        return None
    reaper = Reaper(settings, sessions, store, lambda job_id: send_wakeup(job_id, celery=celery), actor)
    _, stop = reaper.start()
    log.info("reaper %s started (every %.1f s, leases stale after %.1f s)", actor, settings.reaper_interval_s,
             settings.stale_after_s)
    return stop
