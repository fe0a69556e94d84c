"""docker-compose.yml's topology without Docker: every service as a process, wired the way compose wires it.

- migrate and api: the API image's environment (`scripts/image_requirements.py api`, no torch) with the
  project's wheel, run as `secateur migrate` then `secateur serve --no-worker`, SECATEUR_AUTH=keys;
- worker: `secateur worker` from the main venv (the worker image's requirements and more);
- preflight: `secateur serve --no-worker` from the main venv (the worker image's engine), the API's
  SECATEUR_PREFLIGHT_URL pointing at it;
- PostgreSQL, Redis and a SeaweedFS S3 server, as the integration suite provides them.
A key is created with the CLI; the job is submitted with the CLI, followed over server-sent events,
then its ONNX is downloaded with the CLI (a presigned S3 redirect) and with the dashboard in headless
Chromium (a download link streamed through the API), and both copies must be the same valid model.
First the job's model and dataset, stored through the API, are pre-flighted through the API by id:
the torch-free API forwards the request, and the preflight process answers from the shared database and
object store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import yaml
from websockets.asyncio.client import connect

from tests.deploy.conftest import ApiInstall, api_install, project_wheel
from tests.e2e.browser import Page, chromium
from tests.e2e.conftest import ApiClient
from tests.integration.conftest import S3Server
from tests.integration.processes import free_ports, maps_torch, secateur, secateur_env, spawn, stop
from tests.integration.tiny_job import CLASSES, SHAPE, TinyJob, write_tiny_job

__all__ = ["api_install", "chromium", "project_wheel"]  # the backing services come from tests/e2e/conftest.py

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@dataclass(frozen=True)
class Topology:
    """The running stack: the API's URL, a key of tenant `acme`, and the folder holding the logs."""

    url: str
    key: str
    logs: Path
    api_pid: int


PREFLIGHT_URL = "SECATEUR_PREFLIGHT_URL"  # compose gives it to the api service only


def backends(postgres_url: str, redis_url: str, s3: S3Server) -> dict[str, str]:
    """The x-secateur-env block of docker-compose.yml, pointed at this machine's processes."""
    return {"SECATEUR_DATABASE_URL": postgres_url, "SECATEUR_BROKER_URL": redis_url, **s3.env(),
            "SECATEUR_S3_PRESIGN_ENDPOINT_URL": s3.endpoint_url, "SECATEUR_AUTH": "keys"}


@pytest.fixture
def topology(api_install: ApiInstall, postgres_url: str, redis_url: str, s3_settings: S3Server,
             tmp_path: Path) -> Iterator[Topology]:
    """migrate (one-shot), api, preflight and worker, as compose starts them; all stopped at the end."""
    env = backends(postgres_url, redis_url, s3_settings)

    def once(*args: str) -> str:
        """Runs a one-shot command in the API's environment (as compose's migrate service); its stdout."""
        return subprocess.run(api_install.secateur(*args), env=api_install.env(env), cwd=tmp_path, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    once("migrate")
    key = once("keys", "create", "--tenant", "acme").strip().splitlines()[-1]
    port, preflight_port = free_ports(2)
    preflight_url = f"http://127.0.0.1:{preflight_port}"
    preflight = spawn(secateur(["serve", "--host", "127.0.0.1", "--port", str(preflight_port),
                                "--no-worker"]),
                      env=secateur_env(env), log=tmp_path / "preflight.log", cwd=tmp_path)
    api = spawn(api_install.secateur("serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"),
                env=api_install.env({**env, PREFLIGHT_URL: preflight_url}), log=tmp_path / "api.log",
                cwd=tmp_path)
    worker = spawn(secateur(["worker", "--concurrency", "1", "--loglevel=warning"]),
                   env=secateur_env(env), log=tmp_path / "worker.log", cwd=tmp_path)
    try:
        ApiClient(f"http://127.0.0.1:{port}", tmp_path / "api.log").wait_healthy(api)
        ApiClient(preflight_url, tmp_path / "preflight.log").wait_healthy(preflight)
        yield Topology(f"http://127.0.0.1:{port}", key, tmp_path, api.pid)
    finally:
        stop(worker)
        stop(api)
        stop(preflight)


def cli(top: Topology, *args: str) -> str:
    """Runs a client command of the main venv's `secateur` against the stack; returns its stdout."""
    done = subprocess.run(secateur(args), env=secateur_env({"SECATEUR_URL": top.url,
                                                            "SECATEUR_API_KEY": top.key}),
                          cwd=top.logs, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout


def follow_events(top: Topology, job_id: str) -> list[str]:
    """Reads GET /jobs/{id}/events with the key until the job is terminal; returns the statuses seen."""
    statuses: list[str] = []
    headers = {"Authorization": f"Bearer {top.key}", "Accept": "text/event-stream"}
    with httpx.stream("GET", f"{top.url}/jobs/{job_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                statuses.append(json.loads(line[5:])["status"])
                if statuses[-1] in ("succeeded", "failed", "cancelled"):
                    break
    return statuses


def preflight_by_ids(top: Topology, job: TinyJob) -> dict[str, Any]:
    """Stores the job's model and dataset through the API, then pre-flights them by id through the API;
    only the preflight process (torch) can answer 200, from the database and object store it shares."""
    auth = {"Authorization": f"Bearer {top.key}"}
    ids: dict[str, str] = {}
    for kind, path in (("model", job.model), ("dataset", job.dataset)):  # an mlp needs the data's shape
        stored = httpx.post(f"{top.url}/{kind}s", files={"file": (path.name, path.read_bytes())},
                            headers=auth, timeout=60)
        assert stored.status_code in (200, 201), stored.text
        ids[f"{kind}_id"] = stored.json()["id"]
    response = httpx.post(f"{top.url}/preflight", json={**ids, "config": json.loads(job.config)},
                          headers=auth, timeout=180)
    assert response.status_code == 200, (response.text, (top.logs / "preflight.log").read_text()[-3000:])
    answer: dict[str, Any] = response.json()
    return answer


async def browser_download(ws_url: str, top: Topology, job_id: str, folder: Path) -> bytes:
    """Opens the job's page with the key saved in the dashboard, clicks ⬇ model.onnx, returns the file."""
    async with connect(ws_url, max_size=None) as ws:
        page = Page(ws)
        for domain in ("Page", "Runtime", "Log", "DOM"):
            await page.call(f"{domain}.enable")
        await page.allow_downloads(folder)
        await page.goto(f"{top.url}/")
        await page.js(f"localStorage.setItem('secateur.apiKey', {json.dumps(top.key)})")
        await page.call("Runtime.evaluate", expression="0")
        page.errors.clear()  # the job list's 401 before the key was entered, as a user would first see
        await page.js(f"location.hash = '#/jobs/{job_id}'")
        button = "document.querySelector('#downloads a[download=\"model.onnx\"]')"
        await page.wait_for(f"!!{button}", 30, "the job page's download buttons")
        await page.js(f"{button}.click()")
        data = await page.downloaded(folder / "model.onnx", 60)
        await page.call("Runtime.evaluate", expression="0")  # drain events emitted meanwhile
        assert page.errors == []
        return data


def test_compose_topology_submit_preflight_follow_and_download(topology: Topology, chromium: str,
                                                               tmp_path: Path) -> None:
    job = write_tiny_job(tmp_path / "inputs")
    answer = preflight_by_ids(topology, job)
    assert (answer["ok"], answer["input_shape"], answer["num_classes"]) == (True, list(SHAPE), CLASSES)
    assert answer["targets"][0]["reachable"]
    (tmp_path / "config.json").write_text(job.config)
    submitted = json.loads(cli(topology, "submit", str(job.model), str(job.dataset), "--config",
                               str(tmp_path / "config.json"), "--json"))
    statuses = follow_events(topology, submitted["id"])
    assert statuses[-1] == "succeeded", (statuses, (topology.logs / "worker.log").read_text()[-3000:])
    assert "running" in statuses

    (tmp_path / "cli").mkdir()
    cli(topology, "download", submitted["id"], "-o", str(tmp_path / "cli"))
    by_cli = (tmp_path / "cli" / "model.onnx").read_bytes()
    onnx.checker.check_model(onnx.load_from_string(by_cli))
    (tmp_path / "browser").mkdir()
    by_browser = asyncio.run(browser_download(chromium, topology, submitted["id"], tmp_path / "browser"))
    assert by_browser == by_cli
    assert not maps_torch(topology.api_pid)  # the API validated, forwarded and served all this without torch


def test_the_processes_get_the_settings_compose_gives_its_containers() -> None:
    """Every variable of compose's x-secateur-env is set here too, and nothing else; auth is keys in both."""
    compose = yaml.safe_load(COMPOSE.read_text())
    ours = backends("postgresql+psycopg://db/x", "redis://broker:6379/1",
                    S3Server("http://s3:8333", "bucket", "key", "secret"))
    assert set(ours) == set(compose["x-secateur-env"])
    assert ours["SECATEUR_AUTH"] == compose["x-secateur-env"]["SECATEUR_AUTH"] == "keys"
    assert "--no-worker" in compose["services"]["api"]["command"]
    services = compose["services"]
    assert services["api"]["environment"][PREFLIGHT_URL] == "http://preflight:8000"
    preflight = services["preflight"]
    assert preflight["image"] == services["worker"]["image"]  # the engine's image, run as the API on CPU
    assert preflight["command"][:2] == ["secateur", "serve"]
    assert "--no-worker" in preflight["command"]
    assert set(preflight["environment"]) - set(compose["x-secateur-env"]) == {"NVIDIA_VISIBLE_DEVICES"}
    assert preflight["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "ports" not in preflight  # reached by the api only
    assert "deploy" not in preflight  # no GPU reserved
