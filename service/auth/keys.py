"""The API key format `sk_<id>_<secret>`: made from `secrets`, stored as the sha256 of the secret.

The secret is 256 random bits, so a fast hash is enough: unlike a password it cannot be guessed, and a
slow KDF would only slow down every request. A leaked table gives ids and hashes, never usable keys.
Comparison is constant-time (`hmac.compare_digest`); the id is not secret (it is shown in listings).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["PREFIX", "NewKey", "generate", "hash_secret", "parse", "secret_matches"]

PREFIX = "sk"
_ID_BYTES, _SECRET_BYTES = 8, 32
_TOKEN = re.compile(rf"{PREFIX}_(?P<id>[0-9a-f]{{{2 * _ID_BYTES}}})"
                    rf"_(?P<secret>[0-9a-f]{{{2 * _SECRET_BYTES}}})")
# Compared against when the id is unknown, so both failures cost the same work.
_NO_KEY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: its public id, its secret, and the token the user presents."""

    id: str
    secret: str

    @property
    def token(self) -> str:
        """Returns the whole key as the user sends it (`Authorization: Bearer <token>`)."""
        return f"{PREFIX}_{self.id}_{self.secret}"


def generate() -> NewKey:
    """Makes a new key from the OS's CSPRNG."""
    return NewKey(id=secrets.token_hex(_ID_BYTES), secret=secrets.token_hex(_SECRET_BYTES))


def parse(token: str) -> tuple[str, str] | None:
    """Splits a presented token into (id, secret); None when it is not of our format."""
    match = _TOKEN.fullmatch(token)
    return (match["id"], match["secret"]) if match else None


def hash_secret(secret: str) -> str:
    """Returns what is stored for a secret: its sha256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Compares a presented secret with a stored hash in constant time (a missing key still costs a hash)."""
    return hmac.compare_digest(hash_secret(secret), stored_hash or _NO_KEY_HASH) and stored_hash is not None
