"""The engine's `on_progress`: throttled, fenced progress writes that turn cancels and lost leases into stops.

Progress is best effort: while the database is unreachable the engine keeps training (the heartbeat, not
the progress write, decides whether the lease is still held). Stage changes are recorded as job events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.jobs import repository
from workers.compression.errors import JobStopped
from workers.compression.hooks import Progress
from workers.heartbeat import CANCEL_REQUESTED, DB_ERRORS, LEASE_LOST, LeaseGuard
from workers.lease import JobLog, Lease

__all__ = ["ProgressWriter"]


class ProgressWriter:
    """Throttled, fenced progress writes that notice cancels and lost leases (raising JobStopped)."""

    def __init__(self, lease: Lease, factory: sessionmaker[Session], interval_s: float, jlog: JobLog,
                 clock: Callable[[], float] = time.monotonic, *, guard: LeaseGuard | None = None,
                 actor: str = "worker") -> None:
        self.lease, self.factory, self.interval_s, self.log = lease, factory, interval_s, jlog
        self.clock, self.guard, self.actor = clock, guard, actor
        self.started = clock()
        self.last_write = -float("inf")
        self.stage: str | None = None
        self._recorded_stage: str | None = None
        self._db_down = False

    def __call__(self, event: Progress) -> None:
        """Stops the job if the guard says so; writes on a new stage, an epoch end or after the interval."""
        if self.guard is not None:
            self.guard.check(event)
        now = self.clock()
        if event.stage == self.stage and not event.epoch_end and now - self.last_write < self.interval_s:
            return
        self.force(event)

    def force(self, event: Progress) -> None:
        """Writes the event now, whatever the throttle says (e.g. the job's last progress)."""
        now = self.clock()
        self.stage, self.last_write = event.stage, now
        self.write(event.stage, self._progress(event, now - self.started))

    def write(self, stage: str, progress: dict[str, Any]) -> None:
        """Stores stage and progress under the lease; raises JobStopped on a lost lease or a cancel."""
        try:
            with session_scope(self.factory) as session:
                held = repository.update_progress(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                                  stage=stage, progress=progress)
                job = repository.get_job_any_tenant(session, job_id=self.lease.job_id) if held else None
                status = job.status if job is not None else None
                if held and stage != self._recorded_stage:
                    repository.record_event(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                            kind="stage", actor=self.actor, detail={"stage": stage})
        except DB_ERRORS as exc:
            if not self._db_down:
                self.log.warning("progress not written (database unavailable: %s); training goes on",
                                 type(exc).__name__)
            self._db_down = True
            return
        self._db_down = False
        if held:
            self._recorded_stage = stage
        reason = LEASE_LOST if not held else CANCEL_REQUESTED if status == "cancelling" else None
        if reason is not None:
            if self.guard is not None:
                self.guard.request(reason)
            raise JobStopped(reason)

    @staticmethod
    def _progress(event: Progress, elapsed_s: float) -> dict[str, Any]:
        """The `progress` JSON of the API: fraction, epoch/step counters, metrics and an ETA."""
        # ETA by linear extrapolation of the whole job's fraction; None until there is a trend to extend.
        eta = elapsed_s * (1.0 - event.fraction) / event.fraction if event.fraction >= 0.01 else None
        return {"fraction": round(event.fraction, 4), "epoch": event.epoch, "epochs": event.epochs,
                "step": event.step, "steps": event.steps, "eta_s": None if eta is None else round(eta, 1),
                "metrics": dict(event.metrics),
                **({"warnings": list(event.warnings)} if event.warnings else {})}
