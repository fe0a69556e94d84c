"""The wheel stands alone: installed in a fresh venv outside the checkout it migrates a fresh database and
runs an ONNX job through `secateur compress`; with no extras (`secateur[client]`) it pulls only httpx.

The migrate/compress venv borrows the main venv's third-party packages through a .pth line (torch is not
reinstalled per run) but imports the project only from the installed wheel, which each test asserts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.deploy.conftest import clean_env
from tests.deploy.venvs import install_wheel, linked_venv, pip
from tests.engine.conftest import write_inputs
from tests.integration.conftest import postgres_url

__all__ = ["postgres_url"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# What `pip install secateur[client]` may bring: httpx and its own dependencies, nothing of the service.
CLIENT_CLOSURE = {"secateur", "httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi",
                  "typing-extensions", "exceptiongroup"}


@pytest.fixture(scope="module")
def wheel_venv(project_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel installed (third-party packages linked); its bin/."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    install_wheel(linked_venv(venv), project_wheel)
    return venv / "bin"


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs an installed command from a folder outside the checkout; fails with its output if it fails."""
    done = subprocess.run(argv, cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_holds_migrations_and_the_dashboard(project_wheel: Path) -> None:
    names = set(zipfile.ZipFile(project_wheel).namelist())
    assert {"migrations/env.py", "migrations/script.py.mako", "migrations/versions/0001_initial.py",
            "service/static/index.html", "service/static/app.js", "service/static/style.css"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]


def test_the_project_is_imported_from_the_installed_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    probe = "import migrations as m, service as s, workers as w; print(m.__file__, s.__file__, w.__file__)"
    for where in run([str(wheel_venv / "python"), "-c", probe], tmp_path).stdout.split():
        assert Path(where).is_relative_to(wheel_venv.parent), where


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_secateur_migrate_builds_a_fresh_database(wheel_venv: Path, tmp_path: Path, database: str,
                                                  request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if database == "sqlite" else request.getfixturevalue(
        "postgres_url")
    run([str(wheel_venv / "secateur"), "migrate"], tmp_path, SECATEUR_DATABASE_URL=url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
    assert {"jobs", "job_events", "api_keys", "alembic_version"} <= tables
    heads = sorted(p.name.split("_")[0] for p in (Path(__file__).parents[2] / "migrations" / "versions")
                   .glob("[0-9]*.py"))
    assert version == heads[-1]


def test_secateur_compress_runs_an_onnx_job(wheel_venv: Path, tmp_path: Path) -> None:
    model, dataset = write_inputs(tmp_path / "inputs")  # a tiny trained CNN exported to ONNX, and its data
    out = tmp_path / "out"
    run([str(wheel_venv / "secateur"), "compress", "--model", str(model), "--dataset", str(dataset),
         "--method", "magnitude", "--target-sparsity", "0.5", "--epochs", "1", "--batch-size", "64",
         "--device", "cpu", "--out", str(out)], tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.zst", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["passed"] is True


def test_the_client_extra_requires_only_httpx(project_wheel: Path) -> None:
    """The wheel's metadata: without extras, or with [client], the only requirement is httpx."""
    with zipfile.ZipFile(project_wheel) as wheel:
        metadata_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    requirements = metadata.get_all("Requires-Dist") or []
    plain = [r for r in requirements if "extra ==" not in r]
    client = [r for r in requirements if 'extra == "client"' in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in plain] == ["httpx"]
    assert client == []
    assert "client" in (metadata.get_all("Provides-Extra") or [])


def test_a_client_install_runs_the_cli_with_httpx_alone(project_wheel: Path, tmp_path: Path) -> None:
    """`pip install secateur[client]` in an empty venv: httpx's closure only, and `secateur submit` works."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True,
                   timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    pip(python, "install", "-q", f"{project_wheel}[client]")
    installed = {row["name"].lower().replace("_", "-")
                 for row in json.loads(pip(python, "list", "--format=json"))}
    assert "httpx" in installed
    assert installed <= CLIENT_CLOSURE, installed - CLIENT_CLOSURE
    helped = run([str(tmp_path / "venv" / "bin" / "secateur"), "submit", "--help"], tmp_path)
    assert "usage: secateur submit" in helped.stdout
