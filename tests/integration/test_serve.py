"""`secateur serve`'s own duties: supervise the embedded worker, and refuse unauthenticated public binds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from service import serve
from service.settings import get_settings
from tests.integration.processes import wait_until


def test_a_worker_that_dies_is_restarted_and_stop_ends_it(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor restarts a worker that exits, and stop() leaves no process behind."""
    monkeypatch.setattr(serve, "RESTART_DELAYS_S", (0.1,))
    starts = tmp_path / "starts"
    # Stands in for `secateur worker`: the first run dies at once, the next ones stay up.
    code = (f"import pathlib, sys, time; p = pathlib.Path({str(starts)!r}); "
            "n = len(p.read_text()) if p.exists() else 0; p.write_text('x' * (n + 1)); "
            "sys.exit(3) if n == 0 else time.sleep(60)")
    worker = serve.WorkerProcess([sys.executable, "-c", code], dict(os.environ)).start()
    try:
        wait_until(lambda: True if worker.restarts == 1 and starts.exists() and starts.read_text() == "xx"
                   else None, timeout_s=20, what="the restart")
    finally:
        worker.stop(grace_s=5)
    assert worker.proc is not None
    assert worker.proc.returncode == -15  # stopped by the SIGTERM, within the grace period
    assert starts.read_text() == "xx"  # no restart after stop()


@pytest.mark.parametrize(("host", "refused"), [("0.0.0.0", True), ("192.0.2.1", True), ("::1", False)])
def test_open_auth_is_only_served_on_loopback(host: str, refused: bool, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """Without API keys, `serve` refuses any address but loopback, before starting anything."""
    monkeypatch.delenv("SECATEUR_AUTH", raising=False)
    monkeypatch.setenv("SECATEUR_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    started: list[str] = []
    monkeypatch.setattr(serve, "_serve", lambda *args: started.append("api"))
    monkeypatch.setattr(serve, "_prepare", lambda settings: None)
    try:
        code = serve.main(["--host", host, "--no-worker"])
    finally:
        get_settings.cache_clear()
    assert (code, started) == ((2, []) if refused else (0, ["api"]))
