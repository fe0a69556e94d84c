"""A small Secateur deployment made of real processes: `secateur worker`s and `secateur serve --no-worker`
on the suite's own PostgreSQL and Redis, with a local object store; faults go to PIDs this module started.

Timings are shrunk to seconds (heartbeat 0.5 s, stale after 3 s) so each fault plays out quickly. Jobs are
either submitted over HTTP, or (to save the API's work where it is not under test) written the way the
API writes them: inputs in the store, a queued row, then a wake-up through the broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import text

from service.db.migrate import upgrade_head
from service.db.models import Job, JobEvent
from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.queue import make_celery, send_wakeup
from service.settings import Settings
from service.storage import make_store
from service.storage.keys import input_key, job_prefix
from tests.integration.processes import descendants, free_ports, secateur, secateur_env, spawn, stop, tail
from tests.integration.tiny_job import TinyJob

__all__ = ["TENANT", "TIMINGS", "Cluster"]

T = TypeVar("T")
TENANT = "chaos"
TIMINGS = {
    "SECATEUR_HEARTBEAT_INTERVAL_S": "0.5", "SECATEUR_STALE_AFTER_S": "3",
    "SECATEUR_REAPER_INTERVAL_S": "0.5", "SECATEUR_WAKEUP_RESEND_AFTER_S": "4",
    "SECATEUR_STOP_GRACE_S": "5", "SECATEUR_SHUTDOWN_GRACE_S": "8",
    "SECATEUR_PROGRESS_WRITE_INTERVAL_S": "0.5", "SECATEUR_MAX_ATTEMPTS": "3",
    "SECATEUR_DB_CONNECT_TIMEOUT_S": "2", "SECATEUR_DB_STATEMENT_TIMEOUT_S": "5",
    "SECATEUR_DB_OUTAGE_RETRY_S": "60", "SECATEUR_BROKER_TIMEOUT_S": "1",
    # The submit-time sandbox and per-tenant rate limits are not under test here.
    "SECATEUR_VALIDATE_UPLOADS": "false", "SECATEUR_SUBMIT_BURST": "1000",
    "SECATEUR_SUBMIT_RATE_PER_MINUTE": "6000",
}
TERMINAL = ("succeeded", "failed", "cancelled")


class Cluster:
    """One scenario's deployment: a fresh database on the own PostgreSQL, the own Redis, local objects."""

    def __init__(self, admin_url: str, redis_url: str, folder: Path, job: TinyJob) -> None:
        self.folder, self.job = folder, job
        folder.mkdir(parents=True, exist_ok=True)
        name = f"chaos_{secrets.token_hex(4)}"
        admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        self.db_url = admin_url.rsplit("/", 1)[0] + f"/{name}"
        upgrade_head(url=self.db_url)
        self.settings = Settings(data_dir=folder / "data", database_url=self.db_url, broker_url=redis_url,
                                 storage_url=f"file://{folder / 'objects'}",
                                 **{k.removeprefix("SECATEUR_").lower(): v for k, v in TIMINGS.items()})
        self.engine = make_engine(self.db_url, connect_timeout_s=2)
        self.sessions = make_session_factory(self.engine)
        self.store = make_store(self.settings)
        self.producer = make_celery(self.settings)
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a Secateur process of this cluster."""
        urls = {"SECATEUR_DATABASE_URL": self.db_url, "SECATEUR_BROKER_URL": self.settings.broker_url,
                "SECATEUR_STORAGE_URL": self.settings.storage_url}
        return secateur_env({**urls, "SECATEUR_DATA_DIR": str(self.settings.data_dir), **TIMINGS, **extra})

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Starts `secateur worker` (one job at a time) and waits until it consumes."""
        log = self.folder / f"{name}.log"
        proc = spawn(secateur(["worker", "--loglevel=info"]), env=self.env(), log=log, cwd=self.folder)
        self.procs.append(proc)
        self.until(lambda: True if log.exists() and "ready." in log.read_text(errors="replace") else None,
                   timeout_s=60, what=f"worker {name} to be ready", log=log)
        return proc

    def start_api(self) -> tuple[subprocess.Popen[bytes], str]:
        """Starts `secateur serve --no-worker` on a free port; returns it and its base URL once healthy."""
        port = free_ports(1)[0]
        log = self.folder / "api.log"
        proc = spawn(secateur(["serve", "--no-worker", "--port", str(port)]), env=self.env(), log=log,
                     cwd=self.folder)
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool | None:
            """True once /healthz answers."""
            try:
                return True if httpx.get(f"{base}/healthz", timeout=2).status_code == 200 else None
            except httpx.TransportError:
                return None

        self.until(healthy, timeout_s=60, what="the API", log=log)
        return proc, base

    def submit(self, *, wake: bool = True, max_attempts: int = 3) -> str:
        """Writes a queued job as the API does (inputs stored, row committed), then wakes a worker."""
        job_id = secrets.token_hex(16)
        job_id = f"{job_id[:8]}-{job_id[8:12]}-4{job_id[13:16]}-a{job_id[17:20]}-{job_id[20:32]}"
        model_size, model_sha = self.store.put_file(input_key(TENANT, job_id, "model"), self.job.model)
        data_size, data_sha = self.store.put_file(input_key(TENANT, job_id, "dataset"), self.job.dataset)
        with session_scope(self.sessions) as session:
            repository.create_job(session, job=Job(
                id=job_id, tenant=TENANT, config=json.loads(self.job.config), max_attempts=max_attempts,
                model_sha256=model_sha, model_bytes=model_size, model_format="safetensors",
                dataset_sha256=data_sha, dataset_bytes=data_size, dataset_format="npz"))
            repository.record_event(session, job_id=job_id, epoch=0, kind="created", actor="chaos-test")
        if wake:
            self.wake(job_id)
        return job_id

    def wake(self, job_id: str) -> None:
        """Sends one wake-up for the job through the broker."""
        assert send_wakeup(job_id, celery=self.producer), "the broker refused a wake-up"

    def row(self, job_id: str) -> Job:
        """The job row, read afresh."""
        with session_scope(self.sessions) as session:
            job = repository.get_job_any_tenant(session, job_id=job_id)
            assert job is not None
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's events in order."""
        with session_scope(self.sessions) as session:
            return repository.list_events(session, job_id=job_id)

    def until(self, probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.2,
              log: Path | None = None) -> T:
        """Polls `probe` until it returns a value; fails with the workers' log tails on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = probe()
            except Exception:  # the database may be down on purpose: keep polling
                value = None
            if value is not None:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{tail(p, 2500)}" for p in sorted(self.folder.glob("*.log")))
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{tail(log)}{logs}")
            time.sleep(interval_s)

    def finished(self, job_id: str, timeout_s: float = 120) -> Job:
        """Waits until the job is in a terminal state."""
        def done() -> Job | None:
            """The job once it is terminal."""
            job = self.row(job_id)
            return job if job.status in TERMINAL else None

        return self.until(done, timeout_s=timeout_s, what=f"job {job_id} to finish")

    def event(self, job_id: str, match: Callable[[JobEvent], bool], *, timeout_s: float, what: str
              ) -> JobEvent:
        """Waits for the first event of the job that `match`es."""
        return self.until(lambda: next((e for e in self.events(job_id) if match(e)), None),
                          timeout_s=timeout_s, what=what)

    def checkpointed(self, job_id: str, epoch: int, timeout_s: float = 90) -> JobEvent:
        """Waits until the job's current lease has checkpointed at least `epoch` epochs (mid-finetune)."""
        return self.event(job_id, lambda e: e.kind == "checkpoint" and e.detail["epoch"] >= epoch,
                          timeout_s=timeout_s, what=f"job {job_id} to checkpoint epoch {epoch}")

    def child_of(self, worker: subprocess.Popen[bytes], claim: JobEvent) -> int:
        """The PID of the job process a claim names, checked to be a child of `worker` (we kill only ours)."""
        pid = int(claim.detail["pid"])
        assert pid in descendants(worker.pid), f"pid {pid} is not a child of worker {worker.pid}"
        return pid

    def owner(self, workers: list[subprocess.Popen[bytes]], claim: JobEvent) -> subprocess.Popen[bytes]:
        """The worker whose child made `claim`."""
        pid = int(claim.detail["pid"])
        return next(w for w in workers if pid in descendants(w.pid))

    def kill(self, pid: int, sig: signal.Signals) -> float:
        """Sends `sig` to a PID this cluster started (or its job child); returns the wall time it was sent."""
        os.kill(pid, sig)
        return time.time()

    def objects(self, job_id: str) -> list[str]:
        """Every object key stored for the job, relative to its folder (for the one-artifact check)."""
        objects = Path(self.settings.storage_url.removeprefix("file://"))
        root = objects / job_prefix(self.row(job_id).tenant, job_id)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def close(self) -> None:
        """Stops every process (SIGCONT first, in case one is frozen)."""
        for proc in self.procs:
            for pid in [proc.pid, *descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        for proc in reversed(self.procs):
            stop(proc, grace_s=15)
        self.engine.dispose()


def api_json(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of an API response."""
    body: dict[str, Any] = response.json()
    return body
