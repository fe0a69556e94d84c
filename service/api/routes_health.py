"""Liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import AppContext, ContextDep
from service.db.session import ping_database
from service.queue import ping_broker

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Says the process is alive (no dependency is touched)."""
    return {"status": "ok"}


def _checks(context: AppContext) -> dict[str, Callable[[], None]]:
    """The dependencies /readyz probes, each a call that raises when it is unreachable."""
    return {
        "database": lambda: ping_database(context.engine),
        "broker": lambda: ping_broker(context.celery),
        "storage": context.store.check,
    }


async def _probe(check: Callable[[], None], timeout_s: float) -> str:
    """Runs one check in a worker thread, bounded in time; returns "ok" or why it failed."""
    with anyio.move_on_after(timeout_s):
        try:
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
        except Exception as exc:  # any failure means "not ready"; the message says which and why
            return f"{type(exc).__name__}: {exc}"[:300]
        return "ok"
    return f"no answer within {timeout_s:g} s"


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable; `checks` says which"}})
async def readyz(context: ContextDep) -> JSONResponse:
    """Checks the database (SELECT 1), the broker and the object store; 503 naming what failed."""
    timeout = context.settings.db_connect_timeout_s + 1
    results: dict[str, str] = {}

    async def run(name: str, check: Callable[[], None]) -> None:
        results[name] = await _probe(check, timeout)

    async with anyio.create_task_group() as group:
        for name, check in _checks(context).items():
            group.start_soon(run, name, check)
    failed = [name for name, result in results.items() if result != "ok"]
    if not failed:
        return JSONResponse({"status": "ready", "checks": results})
    body: dict[str, Any] = {
        "error": {"code": f"{failed[0]}_unavailable",
                  "message": "; ".join(f"{name}: {results[name]}" for name in failed)},
        "checks": results,
    }
    return JSONResponse(body, status_code=503)
