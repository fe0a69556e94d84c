"""The submit-time check of a job's `webhook_url`: a public http(s) target, and a secret to sign with."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.errors import InvalidRequest
from service.settings import Settings
from service.webhooks.targets import check_target
from service.webhooks.tenant_secrets import secret_for

__all__ = ["admit_webhook"]


def admit_webhook(*, settings: Settings, sessions: sessionmaker[Session], tenant: str,
                  url: str | None) -> None:
    """Refuses a callback the service could not make: a private or unresolvable target (422
    webhook_target_refused), or no secret to sign it with (422 webhook_secret_missing)."""
    if url is None:
        return
    check_target(url, allow_private=settings.webhook_allow_private)
    with session_scope(sessions) as session:
        secret = secret_for(session, settings, tenant)
    if secret is None:
        how = ("set SECATEUR_WEBHOOK_SECRET on the API" if settings.auth == "open"
               else f"run `secateur keys create --tenant {tenant}` (it prints the tenant's webhook secret)")
        raise InvalidRequest(f"callbacks are signed, and tenant {tenant!r} has no webhook secret yet: {how}",
                             code="webhook_secret_missing")
