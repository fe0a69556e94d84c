"""Every query on sweeps and their points. Callers own the transaction; nothing here commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, delete, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import Job, Sweep, SweepPoint, utcnow

__all__ = [
    "add_point",
    "baseline_for_job",
    "create_sweep",
    "delete_sweep",
    "get_sweep",
    "list_sweeps",
    "mark_cancelled",
    "points_with_jobs",
    "store_baseline",
]


def create_sweep(session: Session, *, sweep: Sweep) -> Sweep:
    """Inserts a new sweep row (flushed, so its points can reference it)."""
    session.add(sweep)
    session.flush()
    return sweep


def add_point(session: Session, *, sweep_id: str, position: int, job_id: str, target: dict[str, Any]) -> None:
    """Records that `job_id` runs the sweep's point at `position`."""
    session.add(SweepPoint(sweep_id=sweep_id, position=position, job_id=job_id, target=target))
    session.flush()


def get_sweep(session: Session, *, tenant: str, sweep_id: str) -> Sweep | None:
    """Returns the tenant's sweep, or None when it does not exist or belongs to another tenant."""
    stmt = select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant == tenant)
    return session.execute(stmt).scalar_one_or_none()


def list_sweeps(
    session: Session, *, tenant: str, limit: int, cursor: tuple[datetime, str] | None
) -> list[Sweep]:
    """Returns up to `limit` of the tenant's sweeps, newest first, after the (created_at, id) cursor."""
    stmt = select(Sweep).where(Sweep.tenant == tenant)
    if cursor is not None:
        created_at, sweep_id = cursor
        stmt = stmt.where(or_(Sweep.created_at < created_at,
                              and_(Sweep.created_at == created_at, Sweep.id < sweep_id)))
    stmt = stmt.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit)
    return list(session.execute(stmt).scalars())


def points_with_jobs(session: Session, *, sweep_ids: list[str]) -> list[tuple[SweepPoint, Job]]:
    """Returns the points of these sweeps with their jobs, in sweep and position order (one query)."""
    stmt = (select(SweepPoint, Job).join(Job, Job.id == SweepPoint.job_id)
            .where(SweepPoint.sweep_id.in_(sweep_ids))
            .order_by(SweepPoint.sweep_id, SweepPoint.position))
    return [(point, job) for point, job in session.execute(stmt).tuples()]


def mark_cancelled(session: Session, *, sweep_id: str) -> None:
    """Notes when the sweep was first cancelled (its status reads `cancelled` unless all points succeeded)."""
    session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.cancelled_at.is_(None))
                    .values(cancelled_at=utcnow()).execution_options(synchronize_session=False))


def delete_sweep(session: Session, *, tenant: str, sweep_id: str) -> bool:
    """Deletes the tenant's sweep row (its points go with it); False when it is missing."""
    stmt = delete(Sweep).where(Sweep.id == sweep_id, Sweep.tenant == tenant)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1


def _sweep_of(job_id: str) -> Any:
    """The id of the sweep whose point `job_id` runs, as a scalar subquery."""
    return select(SweepPoint.sweep_id).where(SweepPoint.job_id == job_id).scalar_subquery()


def baseline_for_job(session: Session, *, job_id: str) -> tuple[str, dict[str, Any] | None] | None:
    """Returns (sweep id, its stored dense baseline or None) for a point's job; None for a lone job."""
    row = session.execute(select(Sweep.id, Sweep.baseline).where(Sweep.id == _sweep_of(job_id))).first()
    return None if row is None else (row[0], row[1])


def store_baseline(session: Session, *, job_id: str, baseline: dict[str, Any]) -> bool:
    """Stores the dense baseline on the sweep of `job_id` unless one is there; True when this one was kept."""
    stmt = (update(Sweep).where(Sweep.id == _sweep_of(job_id), Sweep.baseline.is_(None))
            .values(baseline=baseline).execution_options(synchronize_session=False))
    return cast(CursorResult[Any], session.execute(stmt)).rowcount == 1
