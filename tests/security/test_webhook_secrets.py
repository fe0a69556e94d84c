"""`secateur keys create` prints the tenant's webhook secret before the key: one secret per tenant, kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.webhooks.signing import SECRET_PREFIX
from tests.security.test_keys import TOKEN, secateur


def test_keys_create_prints_the_tenants_webhook_secret_once_made(tmp_path: Path) -> None:
    """Two keys of one tenant show the same secret; another tenant gets its own; the key stays last."""
    first = secateur("keys", "create", "--tenant", "acme", data_dir=tmp_path).stdout.strip().splitlines()
    second = secateur("keys", "create", "--tenant", "acme", data_dir=tmp_path).stdout.strip().splitlines()
    other = secateur("keys", "create", "--tenant", "globex", data_dir=tmp_path).stdout.strip().splitlines()
    assert all(TOKEN.fullmatch(lines[-1]) for lines in (first, second, other))
    assert first[-2].startswith(SECRET_PREFIX)
    assert len(first[-2]) == len(SECRET_PREFIX) + 64
    assert first[-2] == second[-2]
    assert other[-2] != first[-2]
    with sqlite3.connect(tmp_path / "secateur.db") as db:
        stored = dict(db.execute("SELECT tenant, secret FROM webhook_secrets").fetchall())
    assert stored == {"acme": first[-2], "globex": other[-2]}
