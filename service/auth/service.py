"""API key use cases: create (the secret is returned once), revoke, list, and authenticate a request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from service.auth import keys, repository
from service.db.models import ApiKey
from service.db.session import session_scope
from service.errors import InvalidRequest, Unauthorized
from service.storage.keys import job_prefix

__all__ = ["KeyService", "check_tenant"]

_REJECTED = "invalid or revoked API key; send `Authorization: Bearer sk_<id>_<secret>`"


def check_tenant(tenant: str) -> str:
    """Returns `tenant` if it is usable in storage keys (lower-case letters, digits, - and _; max 64)."""
    try:
        job_prefix(tenant, str(uuid.UUID(int=0)))  # the storage layout is the one authority on tenant names
    except ValueError:
        raise InvalidRequest(f"invalid tenant {tenant!r}: use 1-64 of a-z, 0-9, '-' and '_', starting with "
                             "a letter or digit", code="invalid_tenant") from None
    return tenant


@dataclass(frozen=True)
class KeyService:
    """Keys over the database; the API calls `authenticate`, the CLI the rest."""

    sessions: sessionmaker[Session]

    def create(self, *, tenant: str, name: str | None = None) -> tuple[ApiKey, str]:
        """Creates a key for the tenant; returns its row and the token (never stored, never shown again)."""
        new = keys.generate()
        row = ApiKey(id=new.id, tenant=check_tenant(tenant), secret_sha256=keys.hash_secret(new.secret),
                     name=name)
        with session_scope(self.sessions) as session:
            repository.create_key(session, key=row)
        return row, new.token

    def revoke(self, key_id: str) -> bool:
        """Revokes a key at once (its next request is a 401); False when unknown or already revoked."""
        with session_scope(self.sessions) as session:
            return repository.revoke_key(session, key_id=key_id)

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Returns the keys (ids, tenants, names, dates; no secrets)."""
        with session_scope(self.sessions) as session:
            return repository.list_keys(session, tenant=tenant)

    def authenticate(self, token: str | None) -> str:
        """Returns the tenant a presented token acts for; one 401 for missing, malformed, unknown, revoked."""
        parsed = keys.parse(token) if token else None
        if parsed is None:
            raise _unauthorized()
        key_id, secret = parsed
        with session_scope(self.sessions) as session:
            row = repository.get_key(session, key_id=key_id)
        stored = row.secret_sha256 if row is not None and row.revoked_at is None else None
        matched = keys.secret_matches(secret, stored)  # always computed: unknown ids cost the same
        if row is None or not matched:
            raise _unauthorized()
        return row.tenant


def _unauthorized() -> Unauthorized:
    """The one refusal for every bad credential (it does not say which check failed)."""
    return Unauthorized(_REJECTED, headers={"WWW-Authenticate": "Bearer"})
