"""Each tenant's webhook signing secret: from the database (keyed mode; `secateur keys create` makes and
prints it), or `SECATEUR_WEBHOOK_SECRET` when the API runs open."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.settings import Settings
from service.webhooks import repository
from service.webhooks.signing import new_secret

__all__ = ["ensure_secret", "secret_for"]


def secret_for(session: Session, settings: Settings, tenant: str) -> str | None:
    """Returns the key that signs the tenant's callbacks, or None when there is none to sign with."""
    if settings.auth == "open":
        return settings.webhook_secret or None
    return repository.get_secret(session, tenant=tenant)


def ensure_secret(sessions: sessionmaker[Session], tenant: str) -> str:
    """Returns the tenant's secret, making one the first time (a concurrent first call keeps the winner's)."""
    with session_scope(sessions) as session:
        existing = repository.get_secret(session, tenant=tenant)
    if existing is not None:
        return existing
    try:
        with session_scope(sessions) as session:
            secret = new_secret()
            repository.put_secret(session, tenant=tenant, secret=secret)
            return secret
    except IntegrityError:
        with session_scope(sessions) as session:
            found = repository.get_secret(session, tenant=tenant)
        assert found is not None  # the insert that beat ours is committed
        return found
