"""An ASGI middleware that bounds how a request body may arrive, before any route sees it.

- Every chunk of a body must arrive within `body_read_timeout_s` of the previous one: a client that
  trickles (or stops sending) its body gets 408 `request_timeout` and loses its connection, instead of
  holding a connection and, for an upload, a stored temp object. (Headers have their own deadline in
  service/api/http_protocol.py.)
- A JSON body (`application/json`, `+json`) is read whole up to `max_json_body_bytes` (413 beyond) and
  parsed with the service's bounds (service/bounds.py: nesting depth, digits per number, no NaN or
  Infinity): a hostile document is 400 `invalid_json` here, whatever route it was sent to, and the route
  then reads the same bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.bounds import JsonRefused, load_json
from service.errors import BadRequest, PayloadTooLarge, RequestTimeout, ServiceError
from service.settings import Settings

__all__ = ["RequestGuard"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _timed(receive: Receive, timeout_s: float) -> Receive:
    """Wraps `receive` so each body chunk must come within `timeout_s`; later messages are not timed."""
    body_done = False

    async def receive_in_time() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()  # e.g. a streaming response waiting for the client to disconnect
        with anyio.move_on_after(timeout_s):
            message = await receive()
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message
        raise RequestTimeout(f"no part of the request body arrived for {timeout_s:g} s; send it without "
                             "pauses")

    return receive_in_time


def _is_json(scope: Scope) -> bool:
    """Tells whether the request carries a JSON body by its method and Content-Type."""
    if scope["method"] not in _BODY_METHODS:
        return False
    headers: dict[bytes, bytes] = dict(scope["headers"])
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


async def _read_json_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Reads a whole JSON body (413 past `limit`) and checks it against the JSON bounds (400)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the JSON body is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise BadRequest("the client went away before sending its body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"the JSON body is larger than the limit of {limit} bytes")
        more = message.get("more_body", False)
    if body:
        try:
            load_json(bytes(body))
        except JsonRefused as exc:
            raise BadRequest(f"the JSON body is refused: {exc}", code="invalid_json") from None
    return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body over once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class RequestGuard:
    """Times every body chunk, and bounds and strictly parses JSON bodies (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Passes the request on with a timed `receive`, after checking a JSON body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        receive = _timed(receive, self.settings.body_read_timeout_s)
        if _is_json(scope):
            try:
                body = await _read_json_body(scope, receive, self.settings.max_json_body_bytes)
            except ServiceError as exc:
                await _answer(exc, scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


async def _answer(exc: ServiceError, scope: Scope, receive: Receive,
                  send: Callable[[Message], Awaitable[None]]) -> None:
    """Sends a refusal in the API's error shape, closing the connection (its body was not all read)."""
    headers: dict[str, Any] = {**exc.headers, "Connection": "close"}
    await error_response(exc.status, exc.code, exc.message, headers)(scope, receive, send)
