"""`secateur keys create --tenant T | list [--tenant T] | revoke ID`: manage API keys in the database.

`create` prints the new key as its last line; it is shown this once (only its sha256 is stored). The line
before it is the tenant's webhook signing secret (made with its first key; the same for all its keys),
which verifies the `Secateur-Signature` header of the tenant's job callbacks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.auth.service import KeyService
from service.errors import ServiceError
from service.webhooks.tenant_secrets import ensure_secret

__all__ = ["main"]


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parses `keys` subcommands."""
    parser = argparse.ArgumentParser(prog="secateur keys", description="Create, list or revoke API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key for a tenant (printed once, as the last line)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for (a-z, 0-9, - and _)")
    create.add_argument("--name", default=None, help="a label to recognize the key by in listings")
    listing = commands.add_parser("list", help="list keys (ids, tenants, dates; never secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    revoke = commands.add_parser("revoke", help="revoke a key by id; its next request is refused")
    revoke.add_argument("key_id", metavar="ID")
    return parser.parse_args(argv)


def _keys() -> KeyService:
    """Returns the key service on the configured database, migrated first when it is the embedded one."""
    from service.db.migrate import upgrade_head
    from service.db.session import make_engine, make_session_factory
    from service.settings import get_settings

    settings = get_settings()
    if settings.migrate_at_startup:
        upgrade_head(url=settings.database_url)
    return KeyService(make_session_factory(make_engine(settings.database_url)))


def main(argv: Sequence[str]) -> int:
    """Runs one `keys` subcommand; 0 on success, 1 when the key to revoke is unknown, 2 on bad input."""
    opts = _parse(argv)
    keys = _keys()
    if opts.command == "create":
        try:
            row, token = keys.create(tenant=opts.tenant, name=opts.name)
        except ServiceError as exc:
            print(f"secateur keys: {exc.message}", file=sys.stderr)
            return 2
        secret = ensure_secret(keys.sessions, row.tenant)
        print(f"webhook secret of tenant {row.tenant} (checks the Secateur-Signature of its callbacks):",
              file=sys.stderr)
        print(secret)
        print(f"created key {row.id} for tenant {row.tenant}; store it now, it is not shown again:",
              file=sys.stderr)
        print(token)
        return 0
    if opts.command == "revoke":
        if not keys.revoke(opts.key_id):
            print(f"secateur keys: no active key {opts.key_id}", file=sys.stderr)
            return 1
        print(f"revoked key {opts.key_id}", file=sys.stderr)
        return 0
    for row in keys.list(opts.tenant):
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        print(f"{row.id}  {row.tenant:<20} {row.created_at:%Y-%m-%d %H:%M}  {state:<24} {row.name or ''}")
    return 0
