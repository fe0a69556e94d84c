"""API test fixtures: a real app on SQLite + local storage + the SQLite broker, all in a tmp folder.

Requests go through httpx's ASGITransport, which streams the request body to the app chunk by chunk,
so the upload path is exercised the way a real server drives it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from safetensors.numpy import save as save_safetensors
from sqlalchemy import func, select

from service.api.app import create_app
from service.api.deps import AppContext
from service.db.migrate import upgrade_head
from service.db.models import Job
from service.db.session import session_scope
from service.settings import Settings

CONFIG = {"method": "l1", "architecture": "mlp", "target": {"pruning_ratio": 0.5}, "finetune": {"epochs": 1}}


@pytest.fixture
def anyio_backend() -> str:
    """Runs async tests on asyncio (the loop uvicorn uses)."""
    return "asyncio"


def safetensors_model(padding_mib: int = 0) -> bytes:
    """Real `mlp` weights (LeNet-300-100) for npz_dataset's 3 features and 2 classes (~126 KB).

    `padding_mib` adds a tensor of that size (for streaming tests; the architecture no longer fits).
    """
    rng = np.random.default_rng(0)
    shapes = {"fc1": (300, 3), "fc2": (100, 300), "fc3": (2, 100)}
    tensors: dict[str, np.ndarray] = {}
    for name, (out, inp) in shapes.items():
        tensors[f"{name}.weight"] = (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)
        tensors[f"{name}.bias"] = np.zeros(out, np.float32)
    if padding_mib:
        tensors["padding"] = np.arange(padding_mib << 18, dtype=np.float32)  # 4 bytes each
    return save_safetensors(tensors)


def onnx_head() -> bytes:
    """The start of an ONNX ModelProto: ir_version=10 and an empty graph (enough for the sniffer)."""
    return b"\x08\x0a\x3a\x00"


def npz_dataset() -> bytes:
    """A tiny real .npz dataset with the four expected arrays."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x_train=rng.random((8, 3), dtype=np.float32), y_train=np.arange(8) % 2,
             x_val=rng.random((4, 3), dtype=np.float32), y_val=np.arange(4) % 2)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A ZIP archive with the given members, in order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass
class Api:
    """A test client bound to an app, with helpers to submit jobs and inspect the DB and the store."""

    client: httpx.AsyncClient
    context: AppContext
    root: Path

    async def submit(self, model: bytes | None = None, dataset: bytes | None = None,
                     config: dict[str, Any] | str | None = None, **kwargs: Any) -> httpx.Response:
        """POSTs a job; parts left as None get valid defaults."""
        text = config if isinstance(config, str) else json.dumps(config if config is not None else CONFIG)
        files = {"model": ("model.safetensors", model if model is not None else safetensors_model()),
                 "dataset": ("data.npz", dataset if dataset is not None else npz_dataset())}
        return await self.client.post("/jobs", files=files, data={"config": text}, **kwargs)

    def stored_files(self) -> list[Path]:
        """Every file in the object store (temp files included), so leftovers are visible."""
        objects = self.root / "objects"
        return sorted(p for p in objects.rglob("*") if p.is_file()) if objects.exists() else []

    def wakeups(self) -> list[str]:
        """The raw wake-up messages waiting in the embedded broker (kombu's SQLAlchemy transport tables)."""
        broker = self.root / "broker.sqlite"
        if not broker.exists():
            return []
        with contextlib.closing(sqlite3.connect(broker)) as db:
            rows = db.execute("SELECT payload FROM kombu_message WHERE visible ORDER BY id")
            return [payload for (payload,) in rows]

    def job_count(self) -> int:
        """How many job rows exist."""
        with session_scope(self.context.jobs.sessions) as session:
            return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Embedded settings under `root` (SQLite, local objects, SQLite broker).

    These tests are about the upload plumbing, so the submit-time sandboxed parse (which needs weights
    that fit a real architecture) is off; the cheap content sniff still runs.
    """
    return Settings(data_dir=root, **{"validate_uploads": False, **overrides})


@pytest.fixture
def make_api(tmp_path: Path) -> Callable[..., Any]:
    """Returns an async context factory: `async with make_api(**settings) as api` gives a migrated app."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Api]:
        app: FastAPI = create_app(make_settings(tmp_path, **overrides))
        context: AppContext = app.state.context
        upgrade_head(context.engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(client=client, context=context, root=tmp_path)
        context.engine.dispose()

    return factory


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> AsyncIterator[Api]:
    """A migrated app with default embedded settings."""
    async with make_api() as ready:
        yield ready
