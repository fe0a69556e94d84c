"""The control plane stays small: importing the API or the CLI loads no torch; settings wait for use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["service.api.app", "service.cli", "service.jobs.service"])
def test_importing_the_control_plane_loads_no_torch(module: str) -> None:
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'onnxruntime', 'torch_pruning') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_no_configuration_means_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATA_DIR", "DATABASE_URL", "BROKER_URL", "STORAGE_URL", "HOST", "AUTH"):
        monkeypatch.delenv(f"SECATEUR_{name}", raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///.secateur/secateur.db"
    assert settings.is_sqlite
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / '.secateur' / 'broker.sqlite'}"
    assert settings.storage_url == f"file://{tmp_path / '.secateur' / 'objects'}"
    assert (settings.host, settings.auth, settings.migrate_at_startup) == ("127.0.0.1", "open", True)


def test_environment_switches_to_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECATEUR_DATABASE_URL", "postgresql://u@db/secateur")
    monkeypatch.setenv("SECATEUR_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("SECATEUR_STORAGE_URL", "s3://bucket/prefix")
    settings = Settings()
    assert not settings.is_sqlite
    assert not settings.migrate_at_startup
    assert (settings.broker_url, settings.storage_url) == ("redis://redis:6379/0", "s3://bucket/prefix")


def test_cli_dispatches_migrate_and_lists_commands(tmp_path: Path) -> None:
    env = {"SECATEUR_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "secateur.db").exists()
    listing = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=ROOT, timeout=60,
                             capture_output=True, text=True, check=True).stdout
    for command in ("compress", "serve", "worker", "migrate", "submit"):
        assert command in listing
