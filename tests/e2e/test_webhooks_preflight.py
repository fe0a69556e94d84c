"""End to end: webhooks and pre-flight on a real API (uvicorn) and a real worker, as separate processes.

A receiver in this process verifies every callback's signature. Jobs end in each terminal state; one ends
while the API is killed (SIGKILL) and is delivered by the restarted API. Every job gets exactly one
verified delivery. A model pre-flight refuses fails as a job with the same code.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from torch import nn

from service.webhooks.signing import HEADER, verify
from tests.e2e.conftest import TERMINAL, ApiClient
from tests.engine.model_files import export_onnx
from tests.integration.processes import free_ports, secateur, secateur_env, spawn, stop, wait_until
from tests.integration.tiny_job import CONFIG, SHAPE, TinyJob, write_tiny_job

pytestmark = pytest.mark.e2e

SECRET = "whsec_e2e"


class Receiver:
    """A loopback HTTP endpoint keeping every callback whose signature verifies (and counting the rest)."""

    def __init__(self) -> None:
        self.verified: list[dict[str, Any]] = []
        self.rejected = 0
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                """Verifies and records one callback, answering 200 (or 400 to a bad signature)."""
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(SECRET, self.headers.get(HEADER, ""), body)
                if ok:
                    received.verified.append({"event": self.headers["Secateur-Event"],
                                              "delivery": self.headers["Secateur-Delivery"],
                                              "job": json.loads(body)})
                else:
                    received.rejected += 1
                self.send_response(200 if ok else 400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Keeps the test output quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def for_job(self, job_id: str) -> list[dict[str, Any]] | None:
        """The verified callbacks of one job (None while there is none)."""
        return [d for d in self.verified if d["job"]["id"] == job_id] or None


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    """Serves a Receiver in a thread for the block."""
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def classifier_only_onnx(path: Path) -> Path:
    """An ONNX model that is only a classifier: no channel group any filter-pruning method may prune."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    return export_onnx(model, path, SHAPE)


def job_status(data_dir: Path, job_id: str) -> str | None:
    """Reads a job's status straight from the embedded database (while no API runs)."""
    with contextlib.closing(sqlite3.connect(data_dir / "secateur.db")) as db:
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def submit(api: ApiClient, job: TinyJob, config: dict[str, Any]) -> str:
    """POSTs a job with the given config; returns its id (the submit-time check may be slow on a busy box)."""
    with job.model.open("rb") as model, job.dataset.open("rb") as dataset:
        files = {"model": (job.model.name, model), "dataset": (job.dataset.name, dataset)}
        response = httpx.post(f"{api.base_url}/jobs", data={"config": json.dumps(config)}, files=files,
                              timeout=180)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_one_verified_callback_per_terminal_state_across_an_api_restart(tmp_path: Path) -> None:
    """succeeded, failed, cancelled, and succeeded while the API was killed: one verified delivery each."""
    tiny = write_tiny_job(tmp_path / "inputs")
    big = write_tiny_job(tmp_path / "big", train=4096)
    data = tmp_path / "data"
    with receiving() as receiver:
        env = secateur_env({"SECATEUR_DATA_DIR": str(data), "SECATEUR_WEBHOOK_SECRET": SECRET,
                            "SECATEUR_WEBHOOK_ALLOW_PRIVATE": "true", "SECATEUR_WEBHOOK_INTERVAL_S": "0.5",
                            "SECATEUR_REAPER_INTERVAL_S": "1", "SECATEUR_PREFLIGHT_SPARE": "true"})
        hooked = {**CONFIG, "webhook_url": receiver.url}
        port = free_ports(1)[0]
        api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
        serve = secateur(["serve", "--no-worker", "--port", str(port)])
        server = spawn(serve, env=env, log=api_log, cwd=tmp_path)
        worker = spawn(secateur(["worker"]), env=env, log=worker_log, cwd=tmp_path)
        try:
            api = ApiClient(f"http://127.0.0.1:{port}", api_log)
            api.wait_healthy(server, timeout_s=90)
            refused = preflight_refusal(api, tmp_path)
            ended = {"succeeded": submit(api, tiny, hooked),
                     "failed": submit(api, TinyJob(refused["model"], tiny.dataset, ""),
                                      {**refused["config"], "webhook_url": receiver.url}),
                     "cancelled": submit(api, big, {**hooked, "finetune": {"epochs": 200, "batch_size": 64}})}
            api.wait_finished(ended["succeeded"], 180)
            httpx.post(f"{api.base_url}/jobs/{ended['cancelled']}/cancel", timeout=10).raise_for_status()
            for status, job_id in ended.items():
                assert api.wait_finished(job_id, 180)["status"] == status, worker_log.read_text()[-3000:]
            failed = api.wait_finished(ended["failed"], 1)
            assert failed["error"]["code"] == refused["code"]  # the job's refusal is pre-flight's

            later = submit(api, big, {**hooked, "finetune": {"epochs": 3, "batch_size": 64}})
            server.send_signal(signal.SIGKILL)  # the API dies; the worker finishes the job meanwhile
            server.wait(30)
            wait_until(lambda: True if job_status(data, later) in TERMINAL else None, timeout_s=180,
                       what="the job to end while the API is down", log=worker_log)
            time.sleep(1.0)
            assert receiver.for_job(later) is None  # nobody was there to send it
            server = spawn(serve, env=env, log=api_log, cwd=tmp_path)
            api.wait_healthy(server, timeout_s=90)
            ended["succeeded while the API was down"] = later
            for job_id in ended.values():
                wait_until(partial(receiver.for_job, job_id), timeout_s=60, log=api_log,
                           what=f"the callback of job {job_id}")
            time.sleep(3.0)  # several sender sweeps: nothing is sent twice
        finally:
            stop(worker)
            stop(server)
        assert receiver.rejected == 0
        for what, job_id in ended.items():
            [delivery] = receiver.for_job(job_id) or []
            status = what.split()[0]
            assert delivery["event"] == f"job.{status}", what
            assert delivery["job"]["status"] == status, what


def preflight_refusal(api: ApiClient, tmp_path: Path) -> dict[str, Any]:
    """POST /preflight on a classifier-only model with l1: a 422 with a code; returns it with the inputs."""
    model = classifier_only_onnx(tmp_path / "classifier.onnx")
    config = {"method": "l1", "target": {"pruning_ratio": 0.5}, "finetune": {"epochs": 1}}
    with model.open("rb") as f:
        response = httpx.post(f"{api.base_url}/preflight", files={"model": ("m.onnx", f)},
                              data={"config": json.dumps(config)}, timeout=120)
    assert response.status_code == 422, response.text
    code = response.json()["error"]["code"]
    assert code == "invalid_config"
    assert "no channel group" in response.json()["error"]["message"]
    return {"model": model, "config": config, "code": code}
