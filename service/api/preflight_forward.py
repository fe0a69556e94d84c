"""Forwards `POST /preflight` to the service named by `SECATEUR_PREFLIGHT_URL` and answers with its answer.

The scale-out API image has no torch, so it cannot run the engine's pre-flight itself; docker-compose.yml
runs a `preflight` service from the worker image (`secateur serve --no-worker`, same database, storage and
keys) and points the API at it. The request goes on as it came (headers, auth included, and the body
streamed through, counted against the upload limit), and the answer comes back unchanged: status and
JSON. Not reaching that service, or an answer that is not JSON, is a coded 503, never a 500.
"""

from __future__ import annotations

import logging

import httpx
from fastapi import Request, Response

from service.api.uploads import bounded_body
from service.errors import Unavailable
from service.settings import Settings

__all__ = ["FORWARDED", "forward_preflight"]

FORWARDED = "secateur-preflight-forwarded"  # on a forwarded request: its receiver runs it, never forwards it
_CONNECT_S = 5.0  # a dead pre-flight service is a fast 503
_ANSWER_MARGIN_S = 60.0  # the receiver reads the body and fetches stored inputs before its child starts
_HOP_BY_HOP = frozenset({"host", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect"})
_ANSWER_HEADERS = ("content-type", "retry-after", "www-authenticate")
log = logging.getLogger(__name__)


async def forward_preflight(request: Request, settings: Settings) -> Response:
    """Sends the request to the pre-flight service and returns its status and JSON as they are."""
    url = settings.preflight_url.rstrip("/") + "/preflight"
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    timeout = httpx.Timeout(connect=_CONNECT_S, pool=_CONNECT_S, write=settings.body_read_timeout_s,
                            read=settings.preflight_timeout_s + _ANSWER_MARGIN_S)
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:  # no proxy
            answer = await client.post(url, headers=[*headers, (FORWARDED, "1")],
                                       content=bounded_body(request, settings.max_upload_bytes))
    except httpx.TimeoutException as exc:
        log.warning("pre-flight service %s timed out: %r", url, exc)
        raise _unavailable(f"did not answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        log.warning("pre-flight service %s unreachable: %r", url, exc)
        raise _unavailable(f"cannot be reached ({type(exc).__name__})") from None
    media = answer.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        log.warning("pre-flight service %s answered %s with %r", url, answer.status_code, media)
        raise _unavailable(f"answered {answer.status_code} without JSON")
    kept = {name: answer.headers[name] for name in _ANSWER_HEADERS if name in answer.headers}
    return Response(answer.content, status_code=answer.status_code, headers=kept)


def _unavailable(what: str) -> Unavailable:
    """The coded 503 for a pre-flight service that gave no usable answer (its address stays in the log)."""
    return Unavailable(f"pre-flight runs in a separate service here (SECATEUR_PREFLIGHT_URL), which {what}; "
                       "retry later", code="preflight_unavailable")
