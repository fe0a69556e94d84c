"""`secateur serve`: the API under uvicorn and, unless `--no-worker`, an embedded worker child process.

With no configuration this is the whole service on one machine: SQLite under `--data-dir`, objects in a
local folder, and a Celery worker started as a child (`secateur worker`, the same code as production),
restarted if it dies and stopped on exit. The API binds 127.0.0.1 by default, and refuses to serve without
authentication on any other address.

The worker never outlives this process: on Linux it is started with a parent-death signal (SIGTERM, the
worker's warm shutdown, when this process dies even by SIGKILL), and its pid is kept in
`DATA_DIR/embedded-worker.pid`, so a restarted `secateur serve` stops a worker a crashed one left behind
(wherever the signal is not available) before starting its own. Slow clients are cut off: request headers
must arrive within `header_read_timeout_s` (service/api/http_protocol.py), and the open-file limit is
raised to its hard limit so idle connections cannot starve `/healthz` of descriptors.

Embedded broker (the transport that needs no server) is whatever `Settings.broker_url` defaults to,
shared by the API's producer and the worker through `service.queue.broker_options`. Measured while
choosing it (a real `celery worker`, prefork, early ack): kombu's filesystem transport and its SQLAlchemy
transport over SQLite both deliver wake-ups (0.2-1 s). Under a concurrent producer the filesystem transport
lost 3 of 3000 messages, because `_put` creates the message file before writing it and a consumer can take
the empty file; inside a Celery worker that empty file is an "Unrecoverable error" that stops the worker.
The SQLAlchemy transport (`sqla+sqlite:///DATA_DIR/broker.sqlite`, BEGIN IMMEDIATE per fetch) delivered
3000 of 3000 with none lost, so it is the embedded default (service/settings.py). Either way this supervisor
restarts a worker that exits, and lost wake-ups are re-sent from the jobs table (the queue of record).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from service.settings import Settings, get_settings

__all__ = ["WorkerProcess", "main"]

log = logging.getLogger(__name__)
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff between restarts of a worker that keeps dying
PID_FILE = "embedded-worker.pid"
_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent thread dies
_WORKER_MARK = b"service.cli\x00worker"  # in /proc/<pid>/cmdline of an embedded worker


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that asks Linux to SIGTERM the child when this process dies; None elsewhere.

    Resolved here, in the parent: the child only calls prctl and getppid, nothing that allocates or locks.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


class WorkerProcess:
    """The embedded worker: `secateur worker` as a child in its own process group, restarted if it exits."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], pid_file: Path | None = None) -> None:
        self.argv, self.env, self.pid_file = list(argv), env, pid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="embedded-worker-watch", daemon=True)

    def start(self) -> WorkerProcess:
        """Stops a worker an earlier server left behind, starts this one and the thread that restarts it."""
        if self.pid_file is not None:
            stop_stray_worker(self.pid_file)
        self._spawn()
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        """Starts one worker process; its own session, so a terminal's Ctrl+C reaches only the API.

        The parent-death signal follows the thread that forks (here, the main or the watcher thread): both
        live as long as the service does.
        """
        with self._lock:
            if not self._stopping.is_set():
                self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True,
                                             preexec_fn=_die_with_parent())
                if self.pid_file is not None:
                    self.pid_file.write_text(f"{self.proc.pid}\n")
                log.info("embedded worker started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        """Waits on the worker; restarts it after a growing delay unless the service is stopping."""
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            delay = RESTART_DELAYS_S[min(self.restarts, len(RESTART_DELAYS_S) - 1)]
            log.warning("embedded worker (pid %d) exited with %s; restarting in %.0f s",
                        proc.pid, code, delay)
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            self._spawn()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stops the worker: SIGTERM to its parent (warm shutdown), then SIGKILL to its whole group."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded worker did not stop within %.0f s; killing it (its job is reaped)",
                        grace_s)
        # Kill the group in any case: a job child may outlive a parent that stopped first.
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def _is_embedded_worker(pid: int) -> bool:
    """Tells whether `pid` is alive and runs an embedded worker (not a reused pid of something else)."""
    try:
        return _WORKER_MARK in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_stray_worker(pid_file: Path, grace_s: float = 10.0) -> bool:
    """Stops the worker (and its process group) a crashed server left behind; True when there was one."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    if not _is_embedded_worker(pid):
        return False
    log.warning("stopping the embedded worker (pid %d) a previous server left running", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # warm shutdown: its job checkpoints and is released
    deadline = time.monotonic() + grace_s
    while _is_embedded_worker(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # it led its own group: job children go with it
    return True


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Sends `sig` to the process group this module started (its leader is `proc`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def is_loopback(host: str) -> bool:
    """Tells whether `host` is a loopback address or `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse(args: Sequence[str] | None) -> argparse.Namespace:
    """Parses `secateur serve` options (host and port default to SECATEUR_HOST/PORT: 127.0.0.1:8000)."""
    parser = argparse.ArgumentParser(prog="secateur serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="address to bind (default SECATEUR_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default SECATEUR_PORT or 8000)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the embedded database, broker and objects live (SECATEUR_DATA_DIR)")
    parser.add_argument("--no-worker", action="store_true",
                        help="serve the API only; run `secateur worker` separately")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(args)


def main(args: Sequence[str] | None = None) -> int:
    """Migrates the embedded database, starts the worker child (by default) and serves the API."""
    opts = _parse(args)
    if opts.data_dir is not None:
        # Through the environment, so the worker child (a fresh process) sees the same settings.
        os.environ["SECATEUR_DATA_DIR"] = str(opts.data_dir.absolute())
        get_settings.cache_clear()
    settings = get_settings()
    host, port = opts.host or settings.host, opts.port or settings.port
    if settings.auth == "open" and not is_loopback(host):
        print(f"secateur serve: refusing to serve without authentication on {host}; bind 127.0.0.1 "
              "or set SECATEUR_AUTH=keys", file=sys.stderr)
        return 2
    logging.basicConfig(level=opts.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _prepare(settings)
    worker = None
    if not opts.no_worker:
        argv = [sys.executable, "-m", "service.cli", "worker", f"--loglevel={opts.log_level}"]
        worker = WorkerProcess(argv, dict(os.environ), settings.data_dir / PID_FILE).start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler found at start: make that
    # handler an exit, so the `finally` below still stops the worker instead of the process just dying.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        _serve(settings, host, port, opts.log_level)
    finally:
        if worker is not None:
            worker.stop()
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    """Turns a termination signal into SystemExit, so cleanup in `finally` blocks runs."""
    raise SystemExit(128 + signum)


def _prepare(settings: Settings) -> None:
    """Creates the data directory, raises the open-file limit, migrates an embedded (SQLite) database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if settings.migrate_at_startup:
        from service.db.migrate import upgrade_head

        upgrade_head(url=settings.database_url)


def _serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    """Runs the API under uvicorn until SIGINT/SIGTERM (imported here: the worker never needs them)."""
    import uvicorn

    from service.api.app import create_app
    from service.api.http_protocol import header_deadline_protocol

    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level,
                http=header_deadline_protocol(settings.header_read_timeout_s))
