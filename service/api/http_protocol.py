"""uvicorn's HTTP protocol with a deadline on request headers, so slow clients cannot hold connections.

uvicorn times out an idle keep-alive connection, but not a connection that sends its request line and
headers a byte at a time (slowloris), nor one that opens and sends nothing: thousands of them hold file
descriptors until `/healthz` cannot be accepted. Here every connection must finish a request's headers
within `header_read_timeout_s` of opening (or of its previous response ending); otherwise it is answered
408 and closed. Body reads have their own per-chunk timeout (service/api/request_guard.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["header_deadline_protocol"]

_BODY = json.dumps({"error": {"code": "request_timeout",
                              "message": "the request headers did not arrive in time"}}).encode()
_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class _HeaderDeadline:
    """Mixin over a uvicorn protocol: a timer from connection (or response end) to complete headers."""

    header_timeout_s: float
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Starts the deadline for the first request's headers."""
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        """Starts the deadline for the next request's headers on a kept-alive connection."""
        super().on_response_complete()  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drops the timer with the connection."""
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        """(Re)starts the header deadline."""
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        """Cancels the header deadline, if any."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        """Closes the connection with a 408 unless a request is being served (its headers arrived)."""
        self._deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # headers complete: the body's own timeout and the app take it from here
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()


def header_deadline_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """Returns uvicorn's HTTP protocol class (httptools when installed, else h11) with the header deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # httptools is optional; h11 always comes with uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    return type("HeaderDeadlineProtocol", (_HeaderDeadline, Base), {"header_timeout_s": header_timeout_s})
