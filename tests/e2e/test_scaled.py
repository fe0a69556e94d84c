"""End to end, scaled out: PostgreSQL + Redis + S3 (SeaweedFS), API and worker as separate processes."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ApiClient, ort_accuracy, seconds_between
from tests.integration.conftest import S3Server
from tests.integration.processes import (
    free_ports,
    maps_torch,
    secateur,
    secateur_env,
    spawn,
    stop,
    wait_until,
)
from tests.integration.tiny_job import write_tiny_job

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_api_and_worker_on_postgres_redis_and_s3(
    postgres_url: str, redis_url: str, s3_settings: S3Server, tmp_path: Path
) -> None:
    """`migrate`, `serve --no-worker` and `worker` on real servers run a job; the ONNX comes from S3."""
    tiny = write_tiny_job(tmp_path / "inputs")
    prefix = f"e2e-{secrets.token_hex(4)}"
    env = secateur_env({"SECATEUR_DATABASE_URL": postgres_url, "SECATEUR_BROKER_URL": redis_url,
                        "SECATEUR_DATA_DIR": str(tmp_path / "data"), **s3_settings.env(prefix)})
    migrated = subprocess.run(secateur(["migrate"]), env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr.decode()
    port = free_ports(1)[0]
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    serve = secateur(["serve", "--no-worker", "--port", str(port)])
    server = spawn(serve, env=env, log=api_log, cwd=tmp_path)
    worker = spawn(secateur(["worker"]), env=env, log=worker_log, cwd=tmp_path)
    try:
        api = ApiClient(f"http://127.0.0.1:{port}", api_log)
        api.wait_healthy(server)
        wait_until(lambda: True if "ready." in worker_log.read_text() else None, timeout_s=30,
                   what="the worker", alive=worker, log=worker_log)
        job_id = api.submit(tiny)["id"]
        job = api.wait_finished(job_id)
        assert job["status"] == "succeeded", (job["error"], worker_log.read_text()[-3000:])
        print(f"\nscaled: POST to worker start {seconds_between(job['created_at'], job['started_at']):.2f} s")
        redirect = api.download_response(f"/jobs/{job_id}/artifacts/model.onnx")
        assert redirect.status_code == 307  # a presigned GET straight from the object store
        assert redirect.headers["location"].startswith(s3_settings.endpoint_url)
        onnx = api.download(f"/jobs/{job_id}/artifacts/model.onnx")
        report = json.loads(api.download(f"/jobs/{job_id}/report"))
        assert ort_accuracy(onnx, tiny, report["inputs"]["normalization"]) == report["pruned"]["ort_accuracy"]
        listed = s3_settings.client().list_objects_v2(Bucket=s3_settings.bucket, Prefix=f"{prefix}/")  # type: ignore[attr-defined]
        keys = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
        assert {"model", "dataset", "model.onnx", "model.onnx.zst", "report.json"} <= keys
        assert not maps_torch(server.pid), "the API process must never load torch"
        assert not maps_torch(worker.pid), "the forking worker parent must never load torch"
    finally:
        stop(worker)
        stop(server)
