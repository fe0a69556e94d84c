"""Real processes for integration and e2e tests: start them, wait on them, and stop every one by PID.

Each process starts in its own session, and `stop` also kills the descendants it had (a `secateur serve`
starts its worker, a Celery worker forks job children), so no test leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    """Returns `count` distinct loopback ports that are free right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def secateur_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any SECATEUR_* setting (embedded defaults), plus the repo and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEUR_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def secateur(args: Sequence[str]) -> list[str]:
    """The argv of the real `secateur` command line, run by this venv's interpreter."""
    return [sys.executable, "-m", "service.cli", *args]


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Starts a process in its own session with stdout and stderr going to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Returns the PIDs of every live descendant of `pid` (children first), read from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def _kill(pid: int, sig: signal.Signals) -> None:
    """Sends a signal to one PID, ignoring processes that are already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Stops a process this suite started: SIGTERM, then SIGKILL after `grace_s`, descendants included."""
    family = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in family:  # whatever the leader did not stop itself
        _kill(pid, signal.SIGKILL)


def wait_until(probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.2,
               alive: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> T:
    """Polls `probe` until it returns something not None; fails with the log's tail on timeout or death."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process exited ({alive.returncode}) waiting for {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}:\n{tail(log)}")
        time.sleep(interval_s)


def tail(log: Path | None, chars: int = 4000) -> str:
    """The end of a log file (for failure messages)."""
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


def maps_torch(pid: int) -> bool:
    """Tells whether a live process has libtorch loaded (read from /proc/PID/maps)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
