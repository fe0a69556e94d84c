"""Every query on jobs and job events. Writes by workers are conditional UPDATEs fenced by the epoch.

Callers own the transaction (see `service.db.session.session_scope`); nothing here commits.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Update, and_, case, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session

from service.bounds import bounded
from service.db.models import Job, JobEvent, UTCDateTime, utcnow
from service.jobs.states import ACTIVE, TERMINAL, sources_of
from service.jobs.stored_inputs_repository import input_bytes

__all__ = [
    "claim_job",
    "count_unfinished_jobs",
    "create_job",
    "delete_job",
    "finish_job",
    "get_job",
    "get_job_any_tenant",
    "get_job_by_idempotency_key",
    "heartbeat",
    "list_events",
    "list_jobs",
    "lock_tenant_submissions",
    "record_event",
    "request_cancel",
    "set_checkpoint",
    "stored_input_bytes",
    "update_progress",
]


def _changed(session: Session, stmt: Update) -> int:
    """Runs a conditional UPDATE without touching loaded objects and returns how many rows it changed."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def _fenced(job_id: str, epoch: int) -> Any:
    """The WHERE clause of every worker write: this job, this lease, and the job still active."""
    return and_(Job.id == job_id, Job.epoch == epoch, Job.status.in_(ACTIVE))


def _reload(session: Session, job_id: str) -> Job | None:
    """Reads a job afresh from the database, overwriting any stale copy in the session."""
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    return session.execute(stmt).scalar_one_or_none()


def create_job(session: Session, *, job: Job) -> Job:
    """Inserts a new job row (flushed, so constraint violations surface here)."""
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, tenant: str, job_id: str) -> Job | None:
    """Returns the tenant's job, or None when it does not exist or belongs to another tenant."""
    return session.execute(select(Job).where(Job.id == job_id, Job.tenant == tenant)).scalar_one_or_none()


def get_job_any_tenant(session: Session, *, job_id: str) -> Job | None:
    """Returns a job whatever its tenant (workers and the reaper only; never on a user's behalf)."""
    return _reload(session, job_id)


def get_job_by_idempotency_key(session: Session, *, tenant: str, key: str) -> Job | None:
    """Returns the tenant's job created with this Idempotency-Key, if any."""
    stmt = select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    return session.execute(stmt).scalar_one_or_none()


def list_jobs(
    session: Session, *, tenant: str, status: str | None, limit: int, cursor: tuple[datetime, str] | None
) -> list[Job]:
    """Returns up to `limit` of the tenant's jobs, newest first, after the (created_at, id) cursor."""
    stmt = select(Job).where(Job.tenant == tenant)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if cursor is not None:
        created_at, job_id = cursor
        older = or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        stmt = stmt.where(older)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.execute(stmt).scalars())


def claim_job(session: Session, *, job_id: str, worker_id: str) -> Job | None:
    """Takes a queued job for this worker (epoch+1, attempt+1); None when it is not queued any more."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources_of("running")))
        .values(status="running", epoch=Job.epoch + 1, attempt=Job.attempt + 1, worker_id=worker_id,
                started_at=func.coalesce(Job.started_at, literal(now, UTCDateTime())), heartbeat_at=now,
                updated_at=now)
    )
    if _changed(session, stmt) != 1:
        return None
    return _reload(session, job_id)


def update_progress(
    session: Session, *, job_id: str, epoch: int, stage: str, progress: dict[str, Any]
) -> bool:
    """Stores the worker's latest stage and progress; False when its lease is lost (stop working)."""
    values = {"stage": stage, "progress": progress, "updated_at": utcnow()}
    stmt = update(Job).where(_fenced(job_id, epoch)).values(**values)
    return _changed(session, stmt) == 1


def heartbeat(session: Session, *, job_id: str, epoch: int) -> str | None:
    """Renews the worker's lease; returns the job's status (e.g. "cancelling"), or None when it is lost."""
    if _changed(session, update(Job).where(_fenced(job_id, epoch)).values(heartbeat_at=utcnow())) != 1:
        return None
    return session.execute(select(Job.status).where(Job.id == job_id)).scalar_one()


def set_checkpoint(session: Session, *, job_id: str, epoch: int, key: str) -> bool:
    """Points the job at its newest checkpoint (written to storage before); False when the lease is lost."""
    stmt = update(Job).where(_fenced(job_id, epoch)).values(checkpoint_key=key, updated_at=utcnow())
    return _changed(session, stmt) == 1


def finish_job(
    session: Session,
    *,
    job_id: str,
    epoch: int,
    status: str,
    metrics: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Moves a job to a terminal status under the worker's lease; False when the lease is lost.

    The error message is cut to a fixed length: it may quote what an upload holds (a member's name).
    """
    if status not in TERMINAL:
        raise ValueError(f"finish_job needs a terminal status, not {status!r}")
    now = utcnow()
    stmt = (
        update(Job)
        .where(_fenced(job_id, epoch), Job.status.in_(sources_of(status)))
        .values(status=status, metrics=metrics, error_code=error_code,
                error_message=None if error_message is None else bounded(error_message),
                finished_at=now, updated_at=now)
    )
    return _changed(session, stmt) == 1


def request_cancel(session: Session, *, tenant: str, job_id: str) -> Job | None:
    """Cancels a queued job at once or marks a running one `cancelling`; returns the job as it now is."""
    now = utcnow()
    mine = and_(Job.id == job_id, Job.tenant == tenant)
    cancelled = update(Job).where(mine, Job.status == "queued").values(
        status="cancelled", finished_at=now, updated_at=now)
    if _changed(session, cancelled) == 0:
        _changed(session, update(Job).where(mine, Job.status == "running").values(
            status="cancelling", updated_at=now))
    job = _reload(session, job_id)
    return job if job is not None and job.tenant == tenant else None


def delete_job(session: Session, *, tenant: str, job_id: str) -> bool:
    """Deletes a finished job of the tenant with its events; False when it is missing or still active."""
    mine = and_(Job.id == job_id, Job.tenant == tenant, Job.status.in_(TERMINAL))
    if session.execute(select(Job.id).where(mine)).first() is None:
        return False
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    result = session.execute(delete(Job).where(mine).execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1


def record_event(
    session: Session, *, job_id: str, epoch: int, kind: str, actor: str, detail: dict[str, Any] | None = None
) -> JobEvent:
    """Appends one event to the job's log."""
    event = JobEvent(job_id=job_id, epoch=epoch, kind=kind, actor=actor, detail=detail or {}, at=utcnow())
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, *, job_id: str, after_id: int = 0) -> list[JobEvent]:
    """Returns the job's events in the order they were recorded, after a given event id."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id)
    return list(session.execute(stmt).scalars())


def count_unfinished_jobs(session: Session, *, tenant: str) -> int:
    """Counts the tenant's jobs that are not finished (queued, running or cancelling): its concurrency."""
    stmt = select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.not_in(TERMINAL))
    return int(session.execute(stmt).scalar_one())


def lock_tenant_submissions(session: Session, *, tenant: str) -> None:
    """Makes the tenant's submissions record one at a time until this transaction ends (exact quotas)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"submit:{tenant}".encode()).digest()[:8], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(key)))
    else:  # SQLite has one write lock: an UPDATE (of no row) takes it, and it is held until commit
        session.execute(update(Job).where(literal(False)).values(tenant=Job.tenant)
                        .execution_options(synchronize_session=False))


def stored_input_bytes(session: Session, *, tenant: str) -> int:
    """Sums the tenant's storage use: each kept job's own uploads, plus its stored inputs once each (a job
    that names a stored model or dataset adds nothing for it)."""
    own = (case((Job.model_id.is_(None), Job.model_bytes), else_=0)
           + case((Job.dataset_id.is_(None), Job.dataset_bytes), else_=0))
    stmt = select(func.coalesce(func.sum(own), 0)).where(Job.tenant == tenant)
    return int(session.execute(stmt).scalar_one()) + input_bytes(session, tenant=tenant)
