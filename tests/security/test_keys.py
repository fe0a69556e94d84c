"""API keys end to end (CLI create/list/revoke, stored hashed), the bind-address rule, JSON-only Celery."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.auth import keys
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = re.compile(r"sk_[0-9a-f]{16}_[0-9a-f]{64}")


def secateur(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the `secateur` CLI in a fresh interpreter with an embedded data dir."""
    environment = {"PATH": os.environ["PATH"], "SECATEUR_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
                   **env}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_keys_cli_creates_shows_once_stores_hashed_lists_and_revokes(tmp_path: Path) -> None:
    created = secateur("keys", "create", "--tenant", "acme", "--name", "ci", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert TOKEN.fullmatch(token)
    key_id, secret = token.split("_")[1:]
    database = (tmp_path / "secateur.db").read_bytes()
    assert secret.encode() not in database  # only its sha256 is stored
    with sqlite3.connect(tmp_path / "secateur.db") as db:
        row = db.execute("SELECT tenant, secret_sha256 FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    assert row == ("acme", keys.hash_secret(secret))
    listing = secateur("keys", "list", data_dir=tmp_path)
    assert f"{key_id}  acme" in listing.stdout
    assert "active" in listing.stdout
    assert secret not in listing.stdout
    assert secateur("keys", "revoke", key_id, data_dir=tmp_path).returncode == 0
    assert "revoked" in secateur("keys", "list", "--tenant", "acme", data_dir=tmp_path).stdout
    assert secateur("keys", "revoke", key_id, data_dir=tmp_path).returncode == 1
    bad = secateur("keys", "create", "--tenant", "../Acme", data_dir=tmp_path)
    assert bad.returncode == 2
    assert "invalid tenant" in bad.stderr


def test_key_format_parse_and_compare() -> None:
    new = keys.generate()
    assert keys.parse(new.token) == (new.id, new.secret)
    assert keys.secret_matches(new.secret, keys.hash_secret(new.secret))
    assert not keys.secret_matches(new.secret, keys.hash_secret(keys.generate().secret))
    assert not keys.secret_matches(new.secret, None)
    for bad in ("", new.token + "0", new.token.upper(), f"pk_{new.id}_{new.secret}", f"sk_{new.id}",
                f"sk_{new.id}_{new.secret[:-1]}", f"sk_{new.id}_{new.secret}\n"):
        assert keys.parse(bad) is None, bad
    assert len({keys.generate().token for _ in range(100)}) == 100


@pytest.mark.parametrize(("host", "via_env"), [("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
                                               ("0.0.0.0", True)])
def test_serve_refuses_a_non_loopback_bind_without_keys(tmp_path: Path, host: str, via_env: bool) -> None:
    args = ("serve", "--no-worker") if via_env else ("serve", "--no-worker", "--host", host)
    env = {"SECATEUR_HOST": host} if via_env else {}
    done = secateur(*args, data_dir=tmp_path, SECATEUR_AUTH="open", **env)
    assert done.returncode != 0
    assert "refusing to serve without authentication" in done.stderr


def test_serve_on_any_address_starts_with_keys(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {"PATH": os.environ["PATH"], "SECATEUR_DATA_DIR": str(tmp_path), "SECATEUR_AUTH": "keys",
                   "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-worker", "--host", "0.0.0.0",
                             "--port", str(port)], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answered = time.monotonic() + 60, False
        while time.monotonic() < deadline and proc.poll() is None and not answered:
            time.sleep(0.2)
            with socket.socket() as client:
                answered = client.connect_ex(("127.0.0.1", port)) == 0
        assert answered, "the server did not start"
    finally:
        proc.terminate()
        proc.wait(30)


def test_celery_speaks_json_only(tmp_path: Path) -> None:
    from service.queue import make_celery as producer
    from workers.celery_app import make_celery as worker

    settings = Settings(data_dir=tmp_path)
    for app in (producer(settings), worker(settings)):
        assert list(app.conf.accept_content) == ["json"]
        assert app.conf.task_serializer == "json"
    assert worker(settings).conf.result_serializer == "json"
