"""Abuse limits: bodies counted as they stream (raw sockets against a real uvicorn), rate limit, quotas,
poll interval, and the upload sandbox's own limits (timeout, memory, CPU, file writes, open files, env).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.auth.service import KeyService
from service.db.migrate import upgrade_head
from service.jobs import sandbox
from service.settings import Settings
from tests.security.conftest import FIGURES, RELAXED, SecureApi, serving
from tests.security.test_authz_matrix import plant_job
from tests.security.uploads import CONFIG, linear_onnx, mlp_safetensors, npz_dataset

LIMIT = 1 << 20  # the upload limit of the raw-socket server
BOUNDARY = "limit-test-boundary"


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """A real uvicorn server (keys mode, 1 MiB upload limit) on a free port: (port, key, data dir)."""
    settings = Settings(data_dir=tmp_path, auth="keys", max_upload_bytes=LIMIT, **RELAXED)
    app = create_app(settings)
    upgrade_head(app.state.context.engine)
    token = KeyService(app.state.context.jobs.sessions).create(tenant="acme")[1]
    with serving(app) as port:
        yield port, token, tmp_path


def _head(port: int, token: str, extra: str) -> bytes:
    """The request line and headers of a job upload."""
    return (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{extra}\r\n").encode()


def _part_start() -> bytes:
    """The start of a model part whose first bytes pass the head sniff (a safetensors header)."""
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"; filename="m.safetensors"\r\n'
            '\r\n').encode() + struct.pack("<Q", 2) + b"{}"


def _response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Reads one HTTP response (status and JSON body) from the socket."""
    data = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    start = body.find(b"{")
    return status, json.loads(body[start:body.rfind(b"}") + 1]) if start >= 0 else {}


def _objects(root: Path) -> list[Path]:
    """Every stored object (nothing may remain of a refused upload)."""
    objects = root / "objects"
    return [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []


def test_chunked_body_is_cut_off_as_soon_as_it_crosses_the_limit(live_server: tuple[int, str, Path]) -> None:
    """No Content-Length at all: the server counts and answers 413 while the client is still sending."""
    port, token, root = live_server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, token, "Transfer-Encoding: chunked\r\n"))
        start = _part_start()
        sock.sendall(f"{len(start):x}\r\n".encode() + start + b"\r\n")
        chunk = bytes(64 * 1024)
        sent, answered = len(start), False
        while sent < 16 * LIMIT:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: it stopped reading
            sent += len(chunk)
            if select.select([sock], [], [], 0.01)[0]:
                answered = True
                break
        status, body = _response(sock)
    FIGURES.append(f"body limit: a chunked upload with no Content-Length got 413 after {sent >> 10} KiB "
                   f"sent (limit {LIMIT >> 10} KiB); a Content-Length over the limit got 413 before any body")
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    assert answered or sent < 16 * LIMIT
    assert sent < 4 * LIMIT  # refused within a few chunks of the limit, not after the whole body
    assert _objects(root) == []


def test_a_content_length_over_the_limit_is_refused_before_the_body(
    live_server: tuple[int, str, Path],
) -> None:
    port, token, root = live_server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, token, f"Content-Length: {100 * LIMIT}\r\n"))
        status, body = _response(sock)  # no body byte was sent
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert _objects(root) == []


def test_a_content_length_that_lies_low_changes_nothing(live_server: tuple[int, str, Path]) -> None:
    """Claiming 1 KiB of a multi-MiB body: the server reads the claimed 1 KiB (a cut body: 400), no more."""
    port, token, root = live_server
    body = _part_start() + bytes(4 * LIMIT)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, token, "Content-Length: 1024\r\n") + body[:1024])
        status, answer = _response(sock)
        with contextlib.suppress(OSError):  # the rest is not part of any request the server accepts
            sock.sendall(body[1024:])
    assert status == 400, answer
    assert _objects(root) == []
    with socket.create_connection(("127.0.0.1", port)) as sock:  # and the server is still serving
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert _response(sock)[0] == 200


def test_both_content_length_and_chunked_is_refused(live_server: tuple[int, str, Path]) -> None:
    """The classic request-smuggling shape: the HTTP layer refuses it outright."""
    port, token, root = live_server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(port, token, "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n"))
        sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")
    assert _objects(root) == []


AsyncApiFactory = Callable[..., AbstractAsyncContextManager[SecureApi]]


async def _refused_config(api: SecureApi, principal: str = "owner") -> Any:
    """A cheap submission that passes the gate, then fails on its config (no upload is checked)."""
    return await api.client.post("/jobs", files={"model": ("m", b"x"), "dataset": ("d", b"x")},
                                 data={"config": "{}"}, headers=api.auth(principal))


@pytest.mark.anyio
async def test_submissions_over_the_rate_get_429_with_retry_after(make_secure_api: AsyncApiFactory) -> None:
    async with make_secure_api(submit_burst=2, submit_rate_per_minute=1.0) as api:
        first, second, third = [await _refused_config(api) for _ in range(3)]
        assert first.status_code == second.status_code == 422
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limited"
        # At most 2 in any 120 s (burst / rate): the oldest of the two leaves the window within 120 s.
        assert 1 <= int(third.headers["retry-after"]) <= 120
        assert (await _refused_config(api, "other")).status_code == 422  # budgets are per tenant


def test_the_rate_budget_lives_in_redis_when_the_broker_is_redis(tmp_path: Path) -> None:
    """Settings: a redis:// broker puts the budget there (shared by replicas); otherwise in memory."""
    broker = "redis://redis:6379/0"
    assert Settings(data_dir=tmp_path).rate_limit_url == "memory://"
    assert Settings(data_dir=tmp_path, broker_url=broker).rate_limit_url == broker


@pytest.mark.anyio
async def test_two_api_replicas_sharing_redis_spend_one_rate_budget(tmp_path: Path, redis_url: str) -> None:
    """Two apps (one database, one real Redis) are two replicas: the tenant's burst is shared, not doubled."""
    settings = Settings(data_dir=tmp_path, auth="keys", rate_limit_url=redis_url, submit_burst=3,
                        submit_rate_per_minute=1.0)
    apps = [create_app(settings) for _ in range(2)]
    upgrade_head(apps[0].state.context.engine)
    token = KeyService(apps[0].state.context.jobs.sessions).create(tenant="acme")[1]
    statuses = []
    for app in (*apps, *apps):  # alternate: A, B, A, B
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/jobs", files={"model": ("m", b"x"), "dataset": ("d", b"x")},
                                         data={"config": "{}"}, headers={"Authorization": f"Bearer {token}"})
            statuses.append(response.status_code)
    assert statuses == [422, 422, 422, 429]  # three pass the gate (then fail on the config), the 4th is over
    for app in apps:
        app.state.context.engine.dispose()


@pytest.mark.anyio
async def test_a_rate_limit_store_that_is_down_lets_submissions_through(
    make_secure_api: AsyncApiFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail open: a Redis outage must not stop submissions (nor answer 500); it is logged instead."""
    async with make_secure_api(rate_limit_url="redis://127.0.0.1:9/0", broker_timeout_s=0.2,
                               submit_burst=1) as api:
        answers = [await _refused_config(api) for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 422]  # past the gate every time
    assert "rate limit skipped" in caplog.text


@pytest.mark.anyio
async def test_unfinished_jobs_quota_is_a_429(make_secure_api: AsyncApiFactory) -> None:
    async with make_secure_api(max_active_jobs_per_tenant=1) as api:
        plant_job(api, "acme", "running")
        response = await api.submit()
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "too_many_active_jobs"
        assert int(response.headers["retry-after"]) > 0
        assert (await api.submit(principal="other")).status_code == 202


@pytest.mark.anyio
async def test_storage_quota_is_a_403_before_and_after_the_upload(make_secure_api: AsyncApiFactory) -> None:
    model, dataset = linear_onnx().SerializeToString(), npz_dataset()
    async with make_secure_api(max_stored_bytes_per_tenant=len(model) + len(dataset) + 5) as api:
        plant_job(api, "acme", "succeeded")  # 10 bytes of inputs: this upload would go 5 bytes over
        after = await api.submit(model, dataset)
        assert (after.status_code, after.json()["error"]["code"]) == (403, "storage_quota_exceeded")
        inputs = [p for p in api.objects() if p.parent.name == "inputs"]
        assert len(inputs) == 2  # the planted job's; the refused upload left nothing
        assert (await api.submit(principal="other")).status_code == 202
    async with make_secure_api(max_stored_bytes_per_tenant=15) as api:
        plant_job(api, "acme", "succeeded")
        plant_job(api, "acme", "succeeded")  # 20 bytes stored: over the quota before any byte is read
        before = await api.submit()
        assert (before.status_code, before.json()["error"]["code"]) == (403, "storage_quota_exceeded")


@pytest.mark.anyio
async def test_status_suggests_a_poll_interval_until_the_job_ends(secure_api: SecureApi) -> None:
    created = await secure_api.submit()
    assert created.headers["retry-after"] == "2"
    queued = await secure_api.client.get(created.headers["location"], headers=secure_api.auth("owner"))
    assert queued.headers["retry-after"] == "2"
    done = plant_job(secure_api, "acme", "succeeded")
    finished = await secure_api.client.get(f"/jobs/{done}", headers=secure_api.auth("owner"))
    assert "retry-after" not in finished.headers


def _validator_children() -> list[int]:
    """Live children of this process running the upload validator."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"workers.compression.validate" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


@pytest.mark.anyio
async def test_a_slow_check_is_a_parse_timeout_and_its_child_is_killed(
    make_secure_api: AsyncApiFactory,
) -> None:
    async with make_secure_api(sandbox_timeout_s=0.05) as api:
        response = await api.submit()
        assert (response.status_code, response.json()["error"]["code"]) == (422, "parse_timeout")
        assert _validator_children() == []
        assert api.objects() == []
        assert (await api.client.get("/healthz")).status_code == 200


@pytest.mark.anyio
async def test_the_memory_cap_is_a_4xx_not_a_crash(make_secure_api: AsyncApiFactory) -> None:
    """At 256 MiB the child cannot even map torch (needed to check safetensors weights): a coded 422."""
    async with make_secure_api(sandbox_memory_bytes=256 << 20) as api:
        response = await api.submit(mlp_safetensors(), names=("w.safetensors", "d.npz"), config=CONFIG)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "parse_resources_exceeded")


@pytest.mark.anyio
async def test_the_child_gets_no_credentials(make_secure_api: AsyncApiFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The real submit path spawns the validator with an environment of its own, nothing inherited."""
    # (SECATEUR_API_KEY is the HTTP client's; the server's own settings must stay as the test sets them.)
    secrets = {"AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_SESSION_TOKEN": "aws-token",
               "SECATEUR_API_KEY": "sk_secret", "DATABASE_URL": "postgresql://u:pw@db/y"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    seen: list[dict[str, str]] = []
    real_popen = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs["env"]))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)  # the sandbox's module: its one Popen call is spied on
    async with make_secure_api() as api:
        assert (await api.submit()).status_code == 202
    [env] = seen
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE",
                        "LC_ALL", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                        "TORCHINDUCTOR_CACHE_DIR"}
    assert not set(secrets.values()) & set(env.values())
    assert env["OMP_NUM_THREADS"] == "1"


def _limited(code: str, tmp_path: Path, cpu_s: int = 5) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a child after the validator's own `limit_resources` (as the validator does)."""
    prelude = ("from workers.compression.validate import limit_resources; "
               f"limit_resources(memory_bytes={512 << 20}, cpu_s={cpu_s})\n")
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=tmp_path, capture_output=True,
                          text=True, env=sandbox.child_env(tmp_path), timeout=60)


def test_rlimits_stop_cpu_burn_file_writes_memory_and_fd_floods(tmp_path: Path) -> None:
    burn = _limited("while True:\n    pass", tmp_path, cpu_s=1)
    assert burn.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    write = _limited("f = open('leak.txt', 'w')\nf.write('x' * 10)\nf.flush()", tmp_path)
    assert "File too large" in write.stderr
    assert (tmp_path / "leak.txt").stat().st_size == 0
    memory = _limited("b = bytearray(1 << 30)", tmp_path)
    assert "MemoryError" in memory.stderr
    files = _limited("fs = [open('/dev/null') for _ in range(200)]", tmp_path)
    assert "Too many open files" in files.stderr


def test_a_child_killed_by_a_limit_or_crashing_maps_to_a_4xx() -> None:
    from service.errors import InvalidRequest, ServiceError
    from workers.compression.errors import InvalidDataset, InvalidModel

    with pytest.raises(InvalidRequest, match="limits") as limit:
        sandbox._verdict([{"stage": "dataset"}], -signal.SIGXCPU, "")
    assert limit.value.code == "parse_resources_exceeded"
    with pytest.raises(InvalidModel, match="crashed"):
        sandbox._verdict([{"stage": "dataset"}, {"stage": "model"}], -signal.SIGSEGV, "")
    with pytest.raises(InvalidDataset, match="crashed"):
        sandbox._verdict([{"stage": "dataset"}], 1, "Traceback ...")
    with pytest.raises(ServiceError) as broken:  # died before touching any input: the server's fault
        sandbox._verdict([], 1, "ModuleNotFoundError")
    assert broken.value.status == 500
