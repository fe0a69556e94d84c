"""docker-compose.yml and the Dockerfile, checked by reading (Docker cannot run on the test machines)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file (YAML merge keys resolved)."""
    parsed: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return parsed


def stages(dockerfile: str) -> dict[str, str]:
    """Splits a Dockerfile into its named stages' text."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", dockerfile, flags=re.MULTILINE | re.IGNORECASE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_compose_has_every_service_with_the_right_image_target(compose: dict[str, Any]) -> None:
    """api/migrate build the torch-free `api` target, the worker `worker`; the backing services exist."""
    services = compose["services"]
    assert {"api", "migrate", "worker", "postgres", "redis", "minio", "minio-bucket"} <= set(services)
    assert services["api"]["build"]["target"] == "api"
    assert services["migrate"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    assert services["migrate"]["command"] == ["secateur", "migrate"]
    assert "--no-worker" in services["api"]["command"]
    assert services["worker"]["command"][:2] == ["secateur", "worker"]


def test_compose_wires_reliability_and_gpus(compose: dict[str, Any]) -> None:
    """Redis keeps an AOF, Postgres a volume, workers reserve one GPU each, everything waits for migrate."""
    services = compose["services"]
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["worker"]["deploy"]["replicas"] == 1
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["SECATEUR_DATABASE_URL"].startswith("postgresql")
        assert env["SECATEUR_BROKER_URL"].startswith("redis://")
        assert env["SECATEUR_STORAGE_URL"] == "s3://secateur/jobs"
        assert env["SECATEUR_AUTH"] == "keys"  # the API binds 0.0.0.0 in its container
    assert "local/secateur" in services["minio-bucket"]["entrypoint"][-1]


def test_the_api_image_installs_no_torch(tmp_path: Path) -> None:
    """The api stage installs the requirements the base stage derives from pyproject: no engine packages."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    named = stages(dockerfile)
    assert {"base", "api", "worker"} <= set(named)
    assert "torch" not in " ".join(line for line in named["api"].splitlines() if "pip install" in line)
    assert "torch==" in named["worker"]
    script = re.search(r"RUN python - <<'EOF'\n(.*?)\nEOF\n", named["base"], flags=re.DOTALL)
    assert script is not None
    code = script.group(1).replace("/tmp/", f"{tmp_path}/")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)
    names = {re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower()
             for line in (tmp_path / "requirements-api.txt").read_text().split()}
    assert {"fastapi", "sqlalchemy", "celery", "boto3"} <= names
    assert not names & {"torch", "torch-pruning", "onnx", "onnxruntime", "safetensors"}
    everything = (tmp_path / "requirements-all.txt").read_text()
    assert "torch" in everything
