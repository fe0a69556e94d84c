"""The read-only queries behind `GET /metrics`: jobs by status, queue age, heartbeats, finished jobs.

Kept apart from `repository.py` (the job lifecycle) because nothing here writes; all are cheap
aggregates over indexed columns, run once per scrape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, distinct, exists, func, or_, select
from sqlalchemy.orm import Session

from service.db.models import Job, JobEvent
from service.jobs.states import ACTIVE
from workers.compression.preflight_verdict import PASSED, PREFLIGHT_VISIBLE, REFUSED

__all__ = [
    "FinishedJob", "count_by_status", "finished_since", "newest_heartbeat", "oldest_queued",
    "preflight_outcomes", "worker_reports",
]


@dataclass(frozen=True)
class FinishedJob:
    """What the duration histograms need from one terminal job."""

    id: str
    status: str
    started_at: datetime | None
    finished_at: datetime
    created_at: datetime
    metrics: dict[str, Any] | None


def count_by_status(session: Session) -> dict[str, int]:
    """Counts all jobs per status (statuses with no jobs are absent)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: int(count) for status, count in rows}


def oldest_queued(session: Session) -> datetime | None:
    """Returns when the oldest still-queued job was created (None when the queue is empty)."""
    return session.execute(select(func.min(Job.created_at)).where(Job.status == "queued")).scalar_one()


def newest_heartbeat(session: Session) -> datetime | None:
    """Returns the most recent heartbeat of any job a worker holds (None when no job is running)."""
    return session.execute(select(func.max(Job.heartbeat_at)).where(Job.status.in_(ACTIVE))).scalar_one()


def worker_reports(session: Session) -> list[tuple[str, dict[str, Any]]]:
    """Returns (worker_id, progress) of every job a worker holds: the workers' latest self-reports."""
    rows = session.execute(
        select(Job.worker_id, Job.progress).where(Job.status.in_(ACTIVE), Job.worker_id.is_not(None))
    )
    return [(str(worker), dict(progress or {})) for worker, progress in rows]


def finished_since(
    session: Session, *, after: tuple[datetime, str] | None, limit: int
) -> list[FinishedJob]:
    """Returns up to `limit` terminal jobs finished after the (finished_at, id) watermark, oldest first."""
    stmt = select(Job.id, Job.status, Job.started_at, Job.finished_at, Job.created_at, Job.metrics).where(
        Job.finished_at.is_not(None)
    )
    if after is not None:
        at, job_id = after
        stmt = stmt.where(or_(Job.finished_at > at, and_(Job.finished_at == at, Job.id > job_id)))
    stmt = stmt.order_by(Job.finished_at, Job.id).limit(limit)
    return [FinishedJob(*row) for row in session.execute(stmt)]


def preflight_outcomes(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Returns jobs per pre-flight verdict (passed, refused), and per code the failed jobs that passed
    pre-flight yet failed for a reason it covers (its misses)."""
    verdicts = session.execute(select(JobEvent.kind, func.count(distinct(JobEvent.job_id)))
                               .where(JobEvent.kind.in_((PASSED, REFUSED))).group_by(JobEvent.kind))
    passed = exists().where(JobEvent.job_id == Job.id, JobEvent.kind == PASSED)
    misses = session.execute(select(Job.error_code, func.count())
                             .where(Job.status == "failed", Job.error_code.in_(PREFLIGHT_VISIBLE), passed)
                             .group_by(Job.error_code))
    return ({str(kind): int(n) for kind, n in verdicts}, {str(code): int(n) for code, n in misses})
