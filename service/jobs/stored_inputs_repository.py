"""Every query on stored inputs (`input_files`) and on the jobs that name them. Nothing here commits."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, or_, select
from sqlalchemy.orm import Session

from service.db.models import InputFile, Job
from service.errors import NotFound
from service.jobs.states import TERMINAL

__all__ = [
    "create_input",
    "delete_input",
    "find_by_sha256",
    "get_input",
    "hold_inputs",
    "input_bytes",
    "list_inputs",
    "unfinished_users",
]


def create_input(session: Session, *, row: InputFile) -> InputFile:
    """Inserts a stored input (flushed: a twin with the same content surfaces as an IntegrityError here)."""
    session.add(row)
    session.flush()
    return row


def get_input(session: Session, *, tenant: str, kind: str, input_id: str,
              for_update: bool = False) -> InputFile | None:
    """Returns the tenant's stored model or dataset, or None (missing, another kind, another tenant's);
    `for_update` locks its row until the transaction ends (PostgreSQL; SQLite has one writer anyway)."""
    stmt = select(InputFile).where(InputFile.id == input_id, InputFile.tenant == tenant,
                                   InputFile.kind == kind)
    return session.execute(stmt.with_for_update() if for_update else stmt).scalar_one_or_none()


def hold_inputs(session: Session, *, tenant: str, ids: list[str]) -> None:
    """Share-locks the stored inputs a job being inserted names, so a concurrent delete waits for the job
    (and then sees it: 409 in_use); NotFound when one was deleted since the job resolved it."""
    if not ids:
        return
    stmt = select(InputFile.id).where(InputFile.tenant == tenant, InputFile.id.in_(ids))
    found = set(session.execute(stmt.with_for_update(read=True)).scalars())
    missing = [input_id for input_id in ids if input_id not in found]
    if missing:
        raise NotFound(f"stored input {missing[0]} was deleted; store the file again")


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
