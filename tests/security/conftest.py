"""Security test fixtures: a real app (SQLite, local objects, embedded broker) with API keys for two tenants.

Requests go through httpx's ASGITransport (the request body streams to the app chunk by chunk); the
upload sandbox runs real child processes.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.api.deps import AppContext
from service.auth.service import KeyService
from service.db.migrate import upgrade_head
from service.settings import Settings
from tests.integration.conftest import redis_url  # noqa: F401  (the real-Redis fixture, for the rate limit)
from tests.security.uploads import CONFIG, linear_onnx, npz_dataset

# Figures measured by the tests, printed at the end of the run (docs/security.md quotes them).
FIGURES: list[str] = []
# Every answer the security suite's API clients got, and those at or over 500 ("507 POST /jobs": a count).
ANSWERS: collections.Counter[str] = collections.Counter()
SERVER_ERRORS: collections.Counter[str] = collections.Counter()

# Generous abuse limits, so only the tests about them ever meet them.
RELAXED: dict[str, Any] = {"submit_burst": 10_000, "submit_rate_per_minute": 60_000.0,
                           "max_active_jobs_per_tenant": 10_000}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Prints the security figures this run measured."""
    if ANSWERS:
        errors = ", ".join(f"{n} x {what}" for what, n in sorted(SERVER_ERRORS.items())) or "none"
        FIGURES.append(f"answers to the security suite's API clients: {ANSWERS.total()}; at or over 500: "
                       f"{SERVER_ERRORS.total()} ({errors})")
    if FIGURES:
        terminalreporter.section("security figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@contextmanager
def serving(app: FastAPI, **options: Any) -> Iterator[int]:
    """Serves `app` with a real uvicorn (given Config options) on a free loopback port until the block ends;
    yields the port. Raw-socket tests need this: httpx's ASGITransport has no connections to abuse."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.context.engine.dispose()


@pytest.fixture
def anyio_backend() -> str:
    """Runs async tests on asyncio (the loop uvicorn uses)."""
    return "asyncio"


@dataclass
class SecureApi:
    """A client bound to an app in `auth=keys` mode, with a key per principal."""

    client: httpx.AsyncClient
    context: AppContext
    root: Path
    tokens: dict[str, str] = field(default_factory=dict)  # principal -> Authorization header value

    def auth(self, principal: str) -> dict[str, str]:
        """Headers that present `principal`'s credentials (none for "no_key")."""
        token = self.tokens.get(principal)
        return {} if token is None else {"Authorization": token}

    async def submit(self, model: bytes | None = None, dataset: bytes | None = None, *,
                     principal: str = "owner", config: dict[str, Any] | None = None,
                     names: tuple[str, str] = ("model.onnx", "data.npz"),
                     headers: dict[str, str] | None = None) -> httpx.Response:
        """POSTs a job; missing files get valid defaults (a linear ONNX model and a flat .npz)."""
        files = {"model": (names[0], model if model is not None else linear_onnx().SerializeToString()),
                 "dataset": (names[1], dataset if dataset is not None else npz_dataset())}
        return await self.client.post("/jobs", files=files, data={"config": json.dumps(config or CONFIG)},
                                      headers={**self.auth(principal), **(headers or {})})

    def objects(self) -> list[Path]:
        """Every file under the object store's root."""
        root = self.root / "objects"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def make_keys(context: AppContext) -> dict[str, str]:
    """The principals' credentials: owner (tenant acme), other (globex), revoked, malformed, wrong secret."""
    keys = KeyService(context.jobs.sessions)
    owner = keys.create(tenant="acme")[1]
    other = keys.create(tenant="globex")[1]
    revoked_row, revoked = keys.create(tenant="acme", name="revoked")
    keys.revoke(revoked_row.id)
    key_id = owner.split("_")[1]
    wrong = f"sk_{key_id}_{'0' * 64}"  # well-formed, real id, wrong secret
    return {"owner": f"Bearer {owner}", "other": f"Bearer {other}", "revoked": f"Bearer {revoked}",
            "malformed": f"Bearer sk_{key_id}_not-a-secret", "wrong_secret": f"Bearer {wrong}"}


async def _tally(response: httpx.Response) -> None:
    """Counts an answer, and names it when it is a server error (the suite's "no 5xx" figure)."""
    ANSWERS[str(response.status_code)] += 1
    if response.status_code >= 500:
        SERVER_ERRORS[f"{response.status_code} {response.request.method} {response.request.url.path}"] += 1


@pytest.fixture
def make_secure_api(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[SecureApi]]:
    """Returns `async with make_secure_api(**settings) as api`: a migrated app with keys, in keys mode."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[SecureApi]:
        settings = Settings(data_dir=tmp_path / "data", auth="keys", **{**RELAXED, **overrides})
        app = create_app(settings)
        context: AppContext = app.state.context
        upgrade_head(context.engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     event_hooks={"response": [_tally]}) as client:
            yield SecureApi(client, context, settings.data_dir, make_keys(context))
        context.engine.dispose()

    return factory


@pytest.fixture
async def secure_api(make_secure_api: Callable[..., AbstractAsyncContextManager[SecureApi]],
                     ) -> AsyncIterator[SecureApi]:
    """An app in keys mode with default (relaxed) limits."""
    async with make_secure_api() as api:
        yield api
