"""How a claimed job leaves its worker: a fenced terminal write, a release to the queue, or nothing at all.

Exactly one outcome is written per lease (`Settler.once`): the runner's thread and the heartbeat's
watchdog may both try, the first one wins. Every outcome is a fenced write with its job event in the same
transaction, retried through a database outage; a terminal one also deletes the job's checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.jobs import recovery, repository
from service.reaper import delete_checkpoints
from service.settings import Settings
from service.storage import ObjectStore
from workers.heartbeat import (
    CANCEL_REQUESTED,
    DB_ERRORS,
    LEASE_LOST,
    MAX_RUNTIME,
    RESOURCES_EXCEEDED,
    SHUTDOWN,
)
from workers.lease import JobLog, Lease, retry_db

__all__ = ["Settler"]


class Settler:
    """Writes one lease's outcome: finish, release or (lease lost) only a note in the event log."""

    def __init__(self, lease: Lease, settings: Settings, factory: sessionmaker[Session], store: ObjectStore,
                 actor: str, jlog: JobLog, wake: Callable[[str], bool],
                 on_settled: Callable[[], None] = lambda: None) -> None:
        self.lease, self.settings, self.factory, self.store = lease, settings, factory, store
        self.actor, self.log, self.wake, self.on_settled = actor, jlog, wake, on_settled
        self._lock = threading.Lock()
        self._done = False
        self.outcome: str | None = None  # the status written, None when nothing was (lease lost)

    def once(self, outcome: Callable[[], str | None]) -> str | None:
        """Runs `outcome` unless the lease is settled already; returns the status written (None: nothing)."""
        with self._lock:
            if not self._done:
                self.outcome, self._done = outcome(), True
                self.on_settled()
            return self.outcome

    def try_once(self, outcome: Callable[[], str | None]) -> bool:
        """Runs `outcome` if nobody settled or is settling the lease; True when this call settled it."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._done:
                return False
            self.outcome, self._done = outcome(), True
            self.on_settled()
            return True
        finally:
            self._lock.release()

    def finish(self, status: str, *, metrics: dict[str, Any] | None = None, code: str | None = None,
               message: str | None = None) -> str | None:
        """Moves the job to a terminal status under the lease; None when the lease was lost meanwhile."""
        def write(session: Session) -> bool:
            """The fenced terminal write and its event."""
            job_id, epoch = self.lease.job_id, self.lease.epoch
            done = repository.finish_job(session, job_id=job_id, epoch=epoch, status=status, metrics=metrics,
                                         error_code=code, error_message=message)
            if done:
                repository.record_event(session, job_id=job_id, epoch=epoch, kind=status, actor=self.actor,
                                        detail={"code": code} if code else {})
            return done

        if not self._write(write, f"finishing {status}"):
            self.log.warning("could not record %s: the lease was lost meanwhile", status)
            return None
        self.log.info("finished: %s", status)
        self._drop_checkpoints()
        return status

    def release(self, *, refund: bool, reason: str) -> str | None:
        """Hands the job back to the queue and wakes a worker; a job being cancelled ends cancelled."""
        def write(session: Session) -> bool:
            """The fenced release and its event."""
            done = recovery.release(session, job_id=self.lease.job_id, epoch=self.lease.epoch, refund=refund)
            if done:
                repository.record_event(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                        kind="released", actor=self.actor,
                                        detail={"reason": reason, "refund": refund})
            return done

        if not self._write(write, "releasing"):
            return self.finish("cancelled")  # cancelling (or lost: then finish writes nothing either)
        self.log.info("released to the queue (%s)", reason)
        self.wake(self.lease.job_id)
        return "queued"

    def stop(self, reason: str, detail: str = "") -> str | None:
        """Settles a job stopped at a step boundary (or by the watchdog) for `reason` (`detail` says more)."""
        if reason == RESOURCES_EXCEEDED:
            return self.finish("failed", code=RESOURCES_EXCEEDED,
                               message=f"the job was stopped: {detail or 'it crossed its resource ceiling'}")
        if reason == CANCEL_REQUESTED:
            return self.finish("cancelled")
        if reason == MAX_RUNTIME:
            limit = self.settings.max_runtime_s
            return self.finish("failed", code="max_runtime",
                               message=f"the job ran longer than the limit of {limit:.0f} s and was stopped")
        if reason == SHUTDOWN:
            return self.release(refund=True, reason="shutdown")
        self.note(LEASE_LOST, {"reason": reason})
        self.log.warning("stopped (%s); the job belongs to another worker now, nothing written", reason)
        return None

    def note(self, kind: str, detail: dict[str, Any]) -> None:
        """Appends an unfenced event under this lease's epoch (the log of what a worker saw; best effort)."""
        try:
            retry_db(self.factory, lambda session: repository.record_event(
                session, job_id=self.lease.job_id, epoch=self.lease.epoch, kind=kind, actor=self.actor,
                detail=detail), for_s=min(self.settings.db_outage_retry_s, 10.0), what=kind, jlog=self.log)
        except DB_ERRORS as exc:
            self.log.warning("event %s not recorded (%s)", kind, type(exc).__name__)

    def _write(self, write: Callable[[Session], bool], what: str) -> bool:
        """Runs a fenced write through a database outage; False when the lease is lost (or stays unknown)."""
        try:
            return retry_db(self.factory, write, for_s=self.settings.db_outage_retry_s, what=what,
                            jlog=self.log)
        except DB_ERRORS:
            self.log.error("%s: the database stayed unavailable; the reaper will recover the job", what)
            return False

    def _drop_checkpoints(self) -> None:
        """Deletes the finished job's checkpoint objects and pointer (the reaper retries what fails here)."""
        try:
            delete_checkpoints(self.store, self.lease.tenant, self.lease.job_id)
            job_id = self.lease.job_id
            retry_db(self.factory, lambda session: recovery.clear_checkpoint(session, job_id=job_id),
                     for_s=0, what="clearing the checkpoint pointer", jlog=self.log)
        except Exception as exc:  # storage or database trouble: the reaper's sweep removes them later
            self.log.warning("checkpoints not removed yet (%s); the reaper will", exc)
