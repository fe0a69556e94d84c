"""End-to-end fixtures: the real backing services (shared with the integration suite) and a job client."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.integration.conftest import postgres_url, redis_url, s3_settings
from tests.integration.processes import free_ports, secateur, secateur_env, spawn, stop, tail, wait_until
from tests.integration.tiny_job import TinyJob

__all__ = ["ApiClient", "embedded_server", "postgres_url", "redis_url", "s3_settings"]

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class ApiClient:
    """Drives one running server over HTTP the way a user would: POST, poll, download."""

    base_url: str
    log: Path

    def wait_healthy(self, alive: Any, timeout_s: float = 40.0) -> None:
        """Waits until GET /healthz answers 200."""
        def healthy() -> bool | None:
            """True once the server answers."""
            try:
                return True if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200 else None
            except httpx.TransportError:
                return None

        wait_until(healthy, timeout_s=timeout_s, what="the API to come up", alive=alive, log=self.log)

    def submit(self, job: TinyJob) -> dict[str, Any]:
        """POSTs the job's files and config; returns the 202 body."""
        with job.model.open("rb") as model, job.dataset.open("rb") as dataset:
            files = {"model": (job.model.name, model), "dataset": (job.dataset.name, dataset)}
            response = httpx.post(f"{self.base_url}/jobs", data={"config": job.config}, files=files,
                                  timeout=30)
        assert response.status_code == 202, response.text
        assert response.headers["location"].endswith(f"/jobs/{response.json()['id']}")
        body: dict[str, Any] = response.json()
        return body

    def wait_finished(self, job_id: str, timeout_s: float = 45.0) -> dict[str, Any]:
        """Polls GET /jobs/{id} until the job is terminal; returns it."""
        def finished() -> dict[str, Any] | None:
            """The job once it is terminal."""
            job: dict[str, Any] = httpx.get(f"{self.base_url}/jobs/{job_id}", timeout=5).json()
            return job if job["status"] in TERMINAL else None

        return wait_until(finished, timeout_s=timeout_s, interval_s=0.5, what=f"job {job_id}", log=self.log)

    def download_response(self, path: str) -> httpx.Response:
        """GETs a path of the API without following redirects."""
        return httpx.get(f"{self.base_url}{path}", timeout=30)

    def download(self, path: str) -> bytes:
        """GETs a file of the API (following a presigned redirect, as curl -L does)."""
        response = httpx.get(f"{self.base_url}{path}", timeout=30, follow_redirects=True)
        assert response.status_code == 200, (response.status_code, response.text[:500], tail(self.log))
        return response.content


def ort_accuracy(onnx_bytes: bytes, job: TinyJob, normalization: dict[str, Any]) -> float:
    """Top-1 accuracy of the downloaded ONNX model on the uploaded val split, preprocessed as reported."""
    import onnxruntime as ort

    x, y = job.val()
    scale = np.float32(normalization["scale"])
    mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    inputs = (x.astype(np.float32) * scale - mean) / std  # (N, C, H, W), as the engine normalizes
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]  # (N, classes)
    return float((logits.argmax(axis=1) == y).mean())


def seconds_between(start: str, end: str) -> float:
    """Seconds between two ISO-8601 timestamps of the API."""
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@contextmanager
def embedded_server(tmp_path: Path) -> Iterator[tuple[ApiClient, subprocess.Popen[bytes]]]:
    """Runs `secateur serve` (embedded default, its own worker) under `tmp_path/data` until the block ends."""
    port = free_ports(1)[0]
    log = tmp_path / "serve.log"
    server = spawn(secateur(["serve", "--data-dir", str(tmp_path / "data"), "--port", str(port)]),
                   env=secateur_env(), log=log, cwd=tmp_path)
    try:
        api = ApiClient(f"http://127.0.0.1:{port}", log)
        api.wait_healthy(server)
        yield api, server
    finally:
        stop(server)
