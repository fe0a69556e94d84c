"""Every query on API keys. Callers own the transaction (see `service.db.session.session_scope`)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from service.db.models import ApiKey, utcnow

__all__ = ["create_key", "get_key", "list_keys", "revoke_key"]


def create_key(session: Session, *, key: ApiKey) -> ApiKey:
    """Inserts a new key row (flushed)."""
    session.add(key)
    session.flush()
    return key


def get_key(session: Session, *, key_id: str) -> ApiKey | None:
    """Returns the key with this id, revoked or not."""
    return session.get(ApiKey, key_id)


def list_keys(session: Session, *, tenant: str | None = None) -> list[ApiKey]:
    """Returns every key (or a tenant's), oldest first."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant == tenant)
    return list(session.execute(stmt).scalars())


def revoke_key(session: Session, *, key_id: str) -> bool:
    """Marks a key revoked from now on; False when it does not exist or was already revoked."""
    stmt = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount == 1
