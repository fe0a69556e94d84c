"""End to end on the embedded default: `secateur serve` alone (SQLite, local objects, its worker child)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zstandard

from tests.e2e.conftest import embedded_server, ort_accuracy, seconds_between
from tests.integration.processes import descendants, wait_until
from tests.integration.tiny_job import write_tiny_job

pytestmark = pytest.mark.e2e


def test_serve_alone_compresses_a_model_that_runs_in_onnxruntime(tmp_path: Path) -> None:
    """POST → succeeded → the downloaded ONNX scores the reported accuracy; serve stops its worker on exit."""
    tiny = write_tiny_job(tmp_path / "inputs")
    with embedded_server(tmp_path) as (api, server):
        log = api.log
        assert f"Uvicorn running on {api.base_url}" in log.read_text()  # loopback by default
        job_id = api.submit(tiny)["id"]
        job = api.wait_finished(job_id)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempt"] == 1
        to_start = seconds_between(job["created_at"], job["started_at"])
        to_end = seconds_between(job["created_at"], job["finished_at"])
        print(f"\nembedded: POST to worker start {to_start:.2f} s, POST to succeeded {to_end:.2f} s")
        report = json.loads(api.download(f"/jobs/{job_id}/report"))
        onnx = api.download(f"/jobs/{job_id}/artifacts/model.onnx")
        accuracy = ort_accuracy(onnx, tiny, report["inputs"]["normalization"])
        assert accuracy == report["pruned"]["ort_accuracy"] == job["metrics"]["pruned"]["ort_accuracy"]
        packed = api.download(f"/jobs/{job_id}/artifacts/model.onnx.zst")
        assert zstandard.ZstdDecompressor().decompress(packed) == onnx
        assert (tmp_path / "data" / "secateur.db").exists()  # everything lives under --data-dir

        family = descendants(server.pid)
        assert family, "serve must have started its worker"
        server.terminate()
        assert server.wait(30) is not None
        wait_until(lambda: True if not any(os.path.exists(f"/proc/{pid}") for pid in family) else None,
                   timeout_s=20, what="the embedded worker to stop with serve", log=log)
