"""Every query on stored inputs (`input_files`) and on the jobs that name them. Nothing here commits."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, or_, select
from sqlalchemy.orm import Session

from service.db.models import InputFile, Job
from service.jobs.states import TERMINAL

__all__ = [
    "create_input",
    "delete_input",
    "find_by_sha256",
    "get_input",
    "input_bytes",
    "list_inputs",
    "unfinished_users",
]


def create_input(session: Session, *, row: InputFile) -> InputFile:
    """Inserts a stored input (flushed: a twin with the same content surfaces as an IntegrityError here)."""
    session.add(row)
    session.flush()
    return row


def get_input(session: Session, *, tenant: str, kind: str, input_id: str) -> InputFile | None:
    """Returns the tenant's stored model or dataset, or None (missing, another kind, another tenant's)."""
    stmt = select(InputFile).where(InputFile.id == input_id, InputFile.tenant == tenant,
                                   InputFile.kind == kind)
    return session.execute(stmt).scalar_one_or_none()


def find_by_sha256(session: Session, *, tenant: str, kind: str, sha256: str) -> InputFile | None:
    """Returns the tenant's stored input of this kind with exactly this content, if any."""
    stmt = select(InputFile).where(InputFile.tenant == tenant, InputFile.kind == kind,
                                   InputFile.sha256 == sha256)
    return session.execute(stmt).scalar_one_or_none()


def list_inputs(session: Session, *, tenant: str, kind: str, limit: int) -> list[InputFile]:
    """Returns up to `limit` of the tenant's stored inputs of one kind, newest first."""
    stmt = (select(InputFile).where(InputFile.tenant == tenant, InputFile.kind == kind)
            .order_by(InputFile.created_at.desc(), InputFile.id.desc()).limit(limit))
    return list(session.execute(stmt).scalars())


def unfinished_users(session: Session, *, tenant: str, input_id: str) -> list[str]:
    """Returns the ids of the tenant's unfinished jobs that name this stored input (at most 10)."""
    stmt = (select(Job.id).where(Job.tenant == tenant, Job.status.not_in(TERMINAL),
                                 or_(Job.model_id == input_id, Job.dataset_id == input_id))
            .order_by(Job.created_at).limit(10))
    return list(session.execute(stmt).scalars())


def delete_input(session: Session, *, tenant: str, input_id: str) -> bool:
    """Deletes the tenant's stored input row; False when it was already gone."""
    stmt = delete(InputFile).where(InputFile.id == input_id, InputFile.tenant == tenant)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1


def input_bytes(session: Session, *, tenant: str) -> int:
    """Sums the sizes of the tenant's stored inputs (each distinct content once)."""
    stmt = select(func.coalesce(func.sum(InputFile.bytes), 0)).where(InputFile.tenant == tenant)
    return int(session.execute(stmt).scalar_one())
