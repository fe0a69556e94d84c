"""The `Secateur-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.

As Stripe signs: the timestamp is inside the MAC, so a receiver that refuses old timestamps also refuses
a replayed delivery, and the MAC covers the exact bytes sent (verify before parsing the JSON).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

__all__ = ["HEADER", "SECRET_PREFIX", "new_secret", "sign", "verify"]

HEADER = "Secateur-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105  # a prefix that makes a leaked secret recognizable, not a secret


def new_secret() -> str:
    """Makes a tenant's signing secret: 256 random bits from the OS's CSPRNG."""
    return SECRET_PREFIX + secrets.token_hex(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    """Returns the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """Returns the header value signing `body` at `timestamp` (now by default)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """Tells whether `header` signs `body` under `secret` within `tolerance_s` of now (a receiver's check)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), _mac(secret, timestamp, body))
