"""PostgreSQL and Redis servers of the chaos suite's own: their own data directories and free ports.

The machine's shared servers are never stopped; these are, on purpose. PostgreSQL is initialised with
`initdb` into a temporary folder and driven with `pg_ctl` (as the `postgres` user when the tests run as
root, since PostgreSQL refuses to run as root); Redis runs without persistence, so a restart loses every
message it held, the worst case for wake-ups.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.integration.processes import free_ports, spawn, stop, tail

__all__ = ["OwnPostgres", "OwnRedis", "postgres_bin"]


def postgres_bin() -> Path | None:
    """Finds the folder of PostgreSQL's server binaries (initdb, pg_ctl), newest version first."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class OwnPostgres:
    """A PostgreSQL cluster in a temporary folder on a free loopback port, started and stopped at will."""

    def __init__(self, bin_dir: Path) -> None:
        # Its own folder under the system temp dir: pytest's tmp folders are private to root, and the
        # server runs as `postgres`.
        self.folder, self.bin = Path(tempfile.mkdtemp(prefix="secateur-chaos-pg-")), bin_dir
        folder = self.folder
        self.data, self.socket_dir, self.log = folder / "data", folder / "socket", folder / "postgres.log"
        self.port = free_ports(1)[0]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _run(self, argv: Sequence[str], timeout_s: float = 60.0, *, check: bool = True) -> int:
        """Runs a PostgreSQL tool (as `postgres` when we are root); raises with its output on failure."""
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._user is not None:
            command = ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}",
                       "--init-groups", *command]
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, cwd=self.folder)
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout.decode()}{done.stderr.decode()}")
        return done.returncode

    def init(self) -> OwnPostgres:
        """Creates the cluster (trust auth on loopback, durability off: the tests need speed, not disks)."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            for path in (self.folder, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])
        return self

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
                   "start"])

    def start_if_stopped(self) -> None:
        """Starts the server unless it runs (a trial that stopped it may have failed before restarting it)."""
        if self._run(["pg_ctl", "-D", str(self.data), "status"], check=False) != 0:
            self.start()

    def stop(self) -> None:
        """Stops the server at once (`-m fast`: open connections are cut, as in a crash of the service)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])

    def remove(self) -> None:
        """Stops the server if it runs and deletes its folder (end of session)."""
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class OwnRedis:
    """A redis-server without persistence on a free loopback port; stopped and restarted by its PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts the server and waits until it answers PING."""
        import redis

        binary = shutil.which("redis-server")
        assert binary is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        self.proc = spawn(argv, env=dict(os.environ), log=self.log, cwd=self.folder)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {tail(self.log)}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stops the server (SIGTERM to the PID we started; nothing is saved, so its messages are gone)."""
        if self.proc is not None:
            stop(self.proc, grace_s=10)
            self.proc = None
