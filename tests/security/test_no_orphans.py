"""No orphans: `secateur serve`'s embedded worker dies with it, even when the server's whole process group is
SIGKILLed, and a restarted server stops a worker a crashed one left behind (issue 15)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.serve import PID_FILE, stop_stray_worker
from tests.service.live import free_socket

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Tells whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers_of(data_dir: Path) -> list[int]:
    """Live processes of embedded workers serving `data_dir` (by command line and environment): each
    worker's parent and its pool children."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (entry.name.isdigit() and b"service.cli\x00worker" in (entry / "cmdline").read_bytes()
                    and f"SECATEUR_DATA_DIR={data_dir}".encode() in (entry / "environ").read_bytes()
                    and _alive(int(entry.name))):
                found.append(int(entry.name))
    return found


def _leaders(data_dir: Path) -> list[int]:
    """The embedded workers' parent processes (each leads its own process group)."""
    leaders = []
    for pid in _workers_of(data_dir):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                leaders.append(pid)
    return leaders


def _wait(condition: object, timeout_s: float) -> bool:
    """Polls `condition()` until it is true or the time is up; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = bool(condition())  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@contextlib.contextmanager
def _serve(data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `secateur serve` (API and embedded worker) in its own process group until it answers."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(data_dir), "OMP_NUM_THREADS": "1",
           "SECATEUR_DATA_DIR": str(data_dir)}
    log = data_dir / "serve.log"
    ready_before = log.read_text().count(" ready.") if log.exists() else 0
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=log.open("ab"))
    try:
        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            return False

        assert _wait(healthy, 60), "secateur serve did not start"
        assert _wait(lambda: _leaders(data_dir), 60), "the embedded worker did not start"
        # Celery's own signal handlers are in place once it says it is ready (SIGTERM = warm shutdown).
        assert _wait(lambda: log.read_text().count(" ready.") > ready_before, 60), "the worker is not ready"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkill_of_serves_process_group_takes_the_worker_with_it(tmp_path: Path) -> None:
    with _serve(tmp_path) as server:
        [worker] = _leaders(tmp_path)
        assert int((tmp_path / PID_FILE).read_text()) == worker
        os.killpg(server.pid, signal.SIGKILL)  # the worker leads its own group: only the parent-death
        server.wait()                          # signal can reach it
        started = time.monotonic()
        assert _wait(lambda: not _workers_of(tmp_path), 30), "the embedded worker outlived secateur serve"
        gone_s = time.monotonic() - started
    with _serve(tmp_path) as server:  # a restarted server runs exactly one worker
        assert len(_leaders(tmp_path)) == 1
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        assert _wait(lambda: not _workers_of(tmp_path), 30)
    print(f"embedded worker gone {gone_s:.1f} s after SIGKILL of secateur serve's process group")


def test_a_restarted_server_stops_a_worker_left_behind(tmp_path: Path) -> None:
    """Where no parent-death signal exists: the pid file names the stray, which is stopped, group and all."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    stray = subprocess.Popen([sys.executable, "-c", code, "service.cli", "worker"], start_new_session=True)
    try:
        pid_file = tmp_path / PID_FILE
        pid_file.write_text(f"{stray.pid}\n")
        time.sleep(0.3)  # let it install its SIGTERM-ignoring handler: only the SIGKILL fallback stops it
        assert stop_stray_worker(pid_file, grace_s=0.5)
        assert stray.wait(10) == -signal.SIGKILL
        assert not pid_file.exists()
        pid_file.write_text(f"{os.getpid()}\n")  # a reused pid running something else is left alone
        assert not stop_stray_worker(pid_file)
    finally:
        with contextlib.suppress(ProcessLookupError):
            stray.kill()
        stray.wait()
