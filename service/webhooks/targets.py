"""Which callback URLs the service may call: http(s) to public addresses only, unless the operator allows
private ones (`SECATEUR_WEBHOOK_ALLOW_PRIVATE=true`, e.g. a receiver on the same host in development).

The host is resolved and every address it resolves to must be public: loopback, link-local (cloud metadata
at 169.254.169.254), private, shared (100.64/10), reserved, multicast and unspecified addresses are
refused. The sender checks again before each attempt, so a name re-pointed after submit is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from service.errors import InvalidRequest

__all__ = ["WEBHOOK_TARGET_REFUSED", "check_target"]

WEBHOOK_TARGET_REFUSED = "webhook_target_refused"


def _resolve(host: str, port: int) -> list[str]:
    """Returns every address `host` resolves to (one literal address resolves to itself)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _public(address: str) -> bool:
    """Tells whether an address is on the public internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuses (422 webhook_target_refused) a callback URL that is not http(s) to a resolvable public host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"webhook_url {url!r} must be an http:// or https:// URL with a host",
                             code=WEBHOOK_TARGET_REFUSED)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"webhook_url {url!r} has an invalid port",
                             code=WEBHOOK_TARGET_REFUSED) from None
    if parts.username or parts.password:
        raise InvalidRequest("webhook_url must not carry credentials; requests are signed instead",
                             code=WEBHOOK_TARGET_REFUSED)
    if allow_private:
        return
    try:
        addresses = _resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        raise InvalidRequest(f"webhook_url host {parts.hostname!r} does not resolve",
                             code=WEBHOOK_TARGET_REFUSED) from None
    private = [a for a in addresses if not _public(a)]
    if private or not addresses:
        raise InvalidRequest(f"webhook_url host {parts.hostname!r} resolves to a loopback, link-local or "
                             f"private address ({', '.join(private)}); callbacks go to public hosts only "
                             "(an operator may set SECATEUR_WEBHOOK_ALLOW_PRIVATE=true)",
                             code=WEBHOOK_TARGET_REFUSED)
