"""A real API served by uvicorn on a free loopback port, and a fake worker that drives job rows.

Streaming responses (server-sent events, downloads) need a real server: httpx's ASGITransport and
Starlette's TestClient hand a response over only once the app has finished it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.api import routes_dashboard, routes_events
from service.api.app import create_app
from service.api.deps import AppContext
from service.db.models import Job
from service.db.session import session_scope
from service.jobs import repository
from service.metrics import install_metrics
from service.settings import Settings
from service.storage.keys import artifact_key
from tests.service.conftest import CONFIG

TENANT = "public"  # the tenant of an open (auth=open) server


@dataclass
class FakeWorker:
    """Moves jobs through their states with the same fenced repository calls a real worker makes."""

    context: AppContext

    def insert(self, config: dict[str, Any] | None = None, tenant: str = TENANT) -> str:
        """Queues a job row directly, skipping the upload (whose sandboxed inspection takes seconds)."""
        job = Job(tenant=tenant, status="queued", config=config or CONFIG, progress={}, model_sha256="0" * 64,
                  model_bytes=1, model_format="safetensors", dataset_sha256="1" * 64, dataset_bytes=1,
                  dataset_format="npz")
        with session_scope(self.context.jobs.sessions) as session:
            return repository.create_job(session, job=job).id

    def claim(self, job_id: str) -> int:
        """Claims a queued job; returns the lease epoch later writes must carry."""
        with session_scope(self.context.jobs.sessions) as session:
            job = repository.claim_job(session, job_id=job_id, worker_id="fake-worker")
            assert job is not None, f"job {job_id} could not be claimed"
            return job.epoch

    def progress(self, job_id: str, lease: int, stage: str, **progress: Any) -> None:
        """Writes a stage and progress (fraction, epoch, epochs, step, metrics) under lease epoch `lease`."""
        time.sleep(0.002)  # distinct updated_at (event ids) even on a coarse clock
        with session_scope(self.context.jobs.sessions) as session:
            written = repository.update_progress(session, job_id=job_id, epoch=lease, stage=stage,
                                                 progress=progress)
        assert written

    def succeed(self, job_id: str, epoch: int, report: dict[str, Any], files: dict[str, bytes]) -> None:
        """Stores artifacts and the report, then marks the job succeeded."""
        store = self.context.store
        for name, data in {**files, "report.json": json.dumps(report).encode()}.items():
            store.put_stream(artifact_key(TENANT, job_id, name), [data])
        # The headline figures, as the real runner's summary keeps them in the job's metrics.
        metrics = {side: report[side] for side in ("baseline", "pruned")} | {"timings_s": report["timings_s"]}
        self.finish(job_id, epoch, "succeeded", metrics=metrics)

    def finish(self, job_id: str, epoch: int, status: str, **outcome: Any) -> None:
        """Moves the job to a terminal status (metrics, error_code, error_message as keywords)."""
        time.sleep(0.002)
        with session_scope(self.context.jobs.sessions) as session:
            assert repository.finish_job(session, job_id=job_id, epoch=epoch, status=status, **outcome)


@dataclass
class Live:
    """A running server: its base URL, the app's wired context and a fake worker for its jobs."""

    url: str
    app: FastAPI
    worker: FakeWorker


def free_socket() -> socket.socket:
    """Returns a listening-ready socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def sample_report(layers: int = 3) -> dict[str, Any]:
    """A report.json shaped as DESIGN.md describes (structured pruning, two training phases)."""
    side = {"accuracy": 0.91, "ort_accuracy": 0.91, "params": 270_000, "nonzero_params": 270_000,
            "flops": 40_000_000, "onnx_bytes": 1_100_000, "onnx_zstd_bytes": 1_000_000,
            "latency_ms": {"b1": 1.2, "b64": 30.0}}
    pruned = {**side, "accuracy": 0.89, "ort_accuracy": 0.889, "params": 140_000, "nonzero_params": 140_000,
              "flops": 20_000_000, "onnx_bytes": 600_000, "onnx_zstd_bytes": 540_000,
              "latency_ms": {"b1": 0.8, "b64": 17.5}}
    history = [{"phase": "regularize", "epoch": e, "loss": 1.2 - 0.1 * e, "accuracy": 0.8 + 0.01 * e,
                "lr": 1e-3} for e in (1, 2)]
    history += [{"phase": "finetune", "epoch": e, "loss": 0.9 - 0.1 * e, "accuracy": 0.85 + 0.01 * e,
                 "lr": 0.01} for e in (1, 2, 3)]
    return {
        "baseline": side, "pruned": pruned, "history": history,
        "layers": [{"name": f"layer{i}.conv", "kind": "conv", "kept_channels": 8 + 4 * i, "channels": 32}
                   for i in range(layers)],
        "method": {"name": "tpp", "pruning_ratio": 0.5, "accuracy_before_removal": 0.9,
                   "accuracy_after_removal": 0.9},
        "verification": {"max_abs_diff": 2e-6, "passed": True},
        "timings_s": {"pruning": 3.5, "finetuning": 61.0, "exporting": 0.4},
    }


def add_client_routes(app: FastAPI) -> None:
    """Includes this issue's routers unless `create_app` already does (until the lead wires them in)."""
    paths = {getattr(route, "path", None) for route in app.routes}
    if "/jobs/{job_id}/events" not in paths:
        app.include_router(routes_events.router)
    if "/metrics" not in paths:
        install_metrics(app)
    if "/" not in paths:
        app.include_router(routes_dashboard.router)


@contextmanager
def serve(root: Path, configure: Callable[[FastAPI], None] | None = None, **settings: Any) -> Iterator[Live]:
    """Serves a fresh embedded app (SQLite, local objects under `root`) until the block ends."""
    app = create_app(Settings(data_dir=root, **settings))
    add_client_routes(app)
    if configure is not None:
        configure(app)
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        port = sock.getsockname()[1]
        yield Live(url=f"http://127.0.0.1:{port}", app=app, worker=FakeWorker(app.state.context))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
