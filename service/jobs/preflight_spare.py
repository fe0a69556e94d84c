"""One pre-flight child kept waiting with the engine already imported, so a request pays only for its checks.

A cold child spends most of a 25 M-parameter model's pre-flight importing torch, torchvision and onnx (6 of
about 10 CPU s). `secateur preflight --await-request` does that first and then blocks on stdin for its
arguments, before it has touched any upload and before it limits itself; the request hands it its words and
the usual sandbox limits apply from there (service/jobs/preflight_sandbox.py). A fresh process per request,
never a fork of a warm one: a child that ran torch and then forked can hang, and nothing one request did
can reach the next. A taken child is replaced once its request is answered; the waiting one dies with its
parent (its stdin closes) or at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from service.jobs.sandbox import start_child

__all__ = ["Spare", "keep_spare_ready", "take_spare"]

_ARGV = [sys.executable, "-B", "-s", "-m", "workers.compression.preflight_cli", "--await-request"]


@dataclass
class Spare:
    """A started pre-flight child and its private folder (its home, temp and working directory)."""

    proc: subprocess.Popen[bytes]
    folder: tempfile.TemporaryDirectory[str] = field(repr=False)

    @property
    def root(self) -> Path:
        """The child's folder: the request writes its config here; `scratch/` is the child's working dir."""
        return Path(self.folder.name)

    @classmethod
    def start(cls) -> Spare:
        """Starts a child that imports the engine and then waits for its arguments."""
        folder = tempfile.TemporaryDirectory(prefix="secateur-preflight-")
        scratch = Path(folder.name) / "scratch"
        scratch.mkdir()
        return cls(start_child(_ARGV, scratch, await_input=True), folder)

    def discard(self) -> None:
        """Kills the child's process group (if still there) and removes its folder."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.folder.cleanup()


_lock = threading.Lock()
_waiting: list[Spare] = []  # at most one: the child the next request takes


def keep_spare_ready() -> None:
    """Starts a waiting child unless a live one waits already (at API startup, so the first request is warm
    too)."""
    with _lock:
        if _waiting and _waiting[0].proc.poll() is None:
            return
        while _waiting:
            _waiting.pop().discard()
        _waiting.append(Spare.start())


def take_spare() -> Spare:
    """Returns a child for one request: the waiting one while it lives, else a new one (which then imports
    while the request waits). The caller starts the next spare when it is done, not now: two children
    importing and analysing at once would share the cores and slow this request down."""
    with _lock:
        taken = _waiting.pop() if _waiting else None
    if taken is not None and taken.proc.poll() is not None:  # it died waiting: start over, cold
        taken.discard()
        taken = None
    return taken if taken is not None else Spare.start()


@atexit.register
def _discard_waiting() -> None:
    """Leaves no waiting child or folder behind when the API process exits."""
    with _lock:
        while _waiting:
            _waiting.pop().discard()
