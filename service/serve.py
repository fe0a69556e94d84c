"""`secateur serve`: the API under uvicorn and, unless `--no-worker`, an embedded worker child process.

With no configuration this is the whole service on one machine: SQLite under `--data-dir`, objects in a
local folder, and a Celery worker started as a child (`secateur worker`, the same code as production),
restarted if it dies and stopped on exit. The API binds 127.0.0.1 by default, and refuses to serve without
authentication on any other address.

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
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from service.settings import Settings, get_settings

__all__ = ["WorkerProcess", "main"]

log = logging.getLogger(__name__)
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # backoff between restarts of a worker that keeps dying


class WorkerProcess:
    """The embedded worker: `secateur worker` as a child in its own process group, restarted if it exits."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv, self.env = list(argv), env
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="embedded-worker-watch", daemon=True)

    def start(self) -> WorkerProcess:
        """Starts the worker and the thread that restarts it when it exits unexpectedly."""
        self._spawn()
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        """Starts one worker process; its own session, so a terminal's Ctrl+C reaches only the API."""
        with self._lock:
            if not self._stopping.is_set():
                self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
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
        worker = WorkerProcess(argv, dict(os.environ)).start()
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
    """Creates the data directory and brings an embedded (SQLite) database to the newest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.migrate_at_startup:
        from service.db.migrate import upgrade_head

        upgrade_head(url=settings.database_url)


def _serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    """Runs the API under uvicorn until SIGINT/SIGTERM (imported here: the worker never needs them)."""
    import uvicorn

    from service.api.app import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
