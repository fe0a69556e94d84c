"""Queries of recovery: the reaper's sweeps and a worker's release of its job. Conditional UPDATEs only.

Every change is a conditional UPDATE that re-checks what the caller saw (epoch, status, heartbeat age), so
several reapers (one per API and worker replica) can sweep at once: a row changes once, the others' UPDATE
match nothing. On PostgreSQL the candidate rows are also read `FOR UPDATE SKIP LOCKED`, so two replicas do
not even wait on each other; SQLite ignores that clause (it has one writer at a time anyway). Callers own
the transaction, as in `service.jobs.repository`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Update, func, select, update
from sqlalchemy.orm import Session

from service.bounds import bounded
from service.db.models import Job, JobEvent, utcnow
from service.jobs.states import ACTIVE, TERMINAL

__all__ = [
    "clear_checkpoint",
    "end_lost",
    "finished_with_checkpoints",
    "release",
    "requeue_lost",
    "stale_leases",
    "take_unclaimed",
]

RESEND_BACKOFF_STEPS = 3  # re-sends of one queued job space out up to 8x `wakeup_resend_after_s`


def _changed(session: Session, stmt: Update) -> int:
    """Runs a conditional UPDATE without touching loaded objects and returns how many rows it changed."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def stale_leases(session: Session, *, cutoff: datetime, limit: int) -> list[Job]:
    """Returns running or cancelling jobs whose heartbeat is older than `cutoff`, locked for this sweep."""
    stmt = (
        select(Job)
        .where(Job.status.in_(ACTIVE), Job.heartbeat_at < cutoff)
        .order_by(Job.heartbeat_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(stmt).scalars())


def _lost(job_id: str, epoch: int, status: str, cutoff: datetime) -> Any:
    """The WHERE clause of a reaper write: the lease it saw, still in that status, still stale."""
    return (Job.id == job_id) & (Job.epoch == epoch) & (Job.status == status) & (Job.heartbeat_at < cutoff)


def requeue_lost(session: Session, *, job_id: str, epoch: int, cutoff: datetime) -> bool:
    """Puts a running job whose worker went silent back in the queue; bumps the epoch to fence that worker."""
    now = utcnow()
    stmt = update(Job).where(_lost(job_id, epoch, "running", cutoff)).values(
        status="queued", epoch=Job.epoch + 1, worker_id=None, heartbeat_at=None, updated_at=now)
    return _changed(session, stmt) == 1


def end_lost(session: Session, *, job_id: str, epoch: int, status: str, cutoff: datetime, new_status: str,
             error_code: str | None = None, error_message: str | None = None) -> bool:
    """Ends a job whose worker went silent: running → failed (attempts used up), cancelling → cancelled."""
    if new_status not in TERMINAL:
        raise ValueError(f"end_lost needs a terminal status, not {new_status!r}")
    now = utcnow()
    stmt = update(Job).where(_lost(job_id, epoch, status, cutoff)).values(
        status=new_status, error_code=error_code,
        error_message=None if error_message is None else bounded(error_message), finished_at=now,
        updated_at=now)
    return _changed(session, stmt) == 1


def release(session: Session, *, job_id: str, epoch: int, refund: bool) -> bool:
    """A worker hands its running job back to the queue (SIGTERM, or an infrastructure error); fenced.

    `refund` gives the attempt back (a shutdown is not the job's fault); the epoch is bumped so nothing the
    releasing worker might still write is accepted. False when the lease was lost or the job is cancelling.
    """
    now = utcnow()
    values: dict[str, Any] = {"status": "queued", "epoch": Job.epoch + 1, "worker_id": None,
                              "heartbeat_at": None, "updated_at": now}
    if refund:
        values["attempt"] = Job.attempt - 1
    stmt = update(Job).where(Job.id == job_id, Job.epoch == epoch, Job.status == "running").values(**values)
    return _changed(session, stmt) == 1


def take_unclaimed(session: Session, *, now: datetime, after_s: float, limit: int, backoff: bool = True
                   ) -> list[tuple[str, int]]:
    """Returns (id, epoch) of queued jobs nobody claimed for a while (wake-up maybe lost), touching them.

    A job is due `after_s` after it was queued, then after 2x, 4x, 8x that since the previous re-send
    (counted from its `wakeup_resent` events under its current epoch): a backlog behind busy workers must
    not fill the broker with copies. `backoff=False` re-sends every job due `after_s`, for when the broker
    is known to have lost messages. Touching `updated_at` is what makes one replica, not all of them,
    re-send each wake-up.
    """
    resends = (
        select(func.count())
        .where(JobEvent.job_id == Job.id, JobEvent.kind == "wakeup_resent", JobEvent.epoch == Job.epoch)
        .scalar_subquery()
    )
    stmt = (
        select(Job.id, Job.epoch, Job.updated_at, resends)
        .where(Job.status == "queued", Job.updated_at < now - timedelta(seconds=after_s))
        .order_by(Job.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Job)
    )
    taken = []
    for job_id, epoch, updated_at, count in session.execute(stmt).all():
        wait_s = after_s * 2 ** min(int(count), RESEND_BACKOFF_STEPS) if backoff else after_s
        cutoff = now - timedelta(seconds=wait_s)
        if updated_at >= cutoff:
            continue
        touch = update(Job).where(Job.id == job_id, Job.status == "queued", Job.updated_at < cutoff)
        if _changed(session, touch.values(updated_at=now)) == 1:
            taken.append((job_id, epoch))
    return taken


def finished_with_checkpoints(session: Session, *, limit: int) -> list[tuple[str, str]]:
    """Returns (job id, tenant) of finished jobs whose checkpoints were not removed yet."""
    stmt = (
        select(Job.id, Job.tenant)
        .where(Job.status.in_(TERMINAL), Job.checkpoint_key.is_not(None))
        .limit(limit)
    )
    return [(job_id, tenant) for job_id, tenant in session.execute(stmt)]


def clear_checkpoint(session: Session, *, job_id: str) -> bool:
    """Forgets a finished job's checkpoint pointer (after its objects were deleted)."""
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(TERMINAL), Job.checkpoint_key.is_not(None))
    return _changed(session, stmt.values(checkpoint_key=None)) == 1
