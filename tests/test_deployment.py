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
    assert {"api", "migrate", "worker", "postgres", "redis", "seaweedfs", "s3-bucket"} <= set(services)
    for name in ("api", "migrate", "s3-bucket"):
        assert services[name]["build"]["target"] == "api"
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
        for first in ("migrate", "s3-bucket"):
            assert services[name]["depends_on"][first]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["SECATEUR_DATABASE_URL"].startswith("postgresql")
        assert env["SECATEUR_BROKER_URL"].startswith("redis://")
        assert env["SECATEUR_STORAGE_URL"] == "s3://secateur/jobs"
        assert env["SECATEUR_AUTH"] == "keys"  # the API binds 0.0.0.0 in its container
    assert 'create_bucket(Bucket="secateur")' in services["s3-bucket"]["command"][-1]
    assert services["seaweedfs"]["command"][0] == "mini"  # the server tests/e2e/test_compose_topology.py runs


def image_requirements(image: str) -> set[str]:
    """The distribution names scripts/image_requirements.py gives an image (what the Dockerfile installs)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "image_requirements.py"), image],
                          check=True, capture_output=True, text=True, timeout=30)
    return {re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower() for line in done.stdout.split()}


def test_each_image_installs_its_scripted_requirements_then_the_wheel() -> None:
    """Both stages install the script's list, then the wheel (no source tree, no editable install)."""
    named = stages((ROOT / "Dockerfile").read_text())
    assert {"base", "wheel", "api", "worker"} <= set(named)
    assert "COPY scripts/image_requirements.py scripts/" in named["base"]  # beside pyproject.toml, as here
    assert "python scripts/image_requirements.py api > /tmp/requirements-api.txt" in named["base"]
    assert "python scripts/image_requirements.py worker > /tmp/requirements-worker.txt" in named["base"]
    assert "pip wheel --no-deps" in named["wheel"]
    for image in ("api", "worker"):
        assert f"pip install -r /tmp/requirements-{image}.txt" in named[image]
        assert "pip install --no-deps /wheels/*.whl" in named[image]
        assert "COPY . " not in named[image]
        assert "-e ." not in named[image]
    assert "torch" not in " ".join(line for line in named["api"].splitlines() if "pip install" in line)
    assert "torch==" in named["worker"]


def test_the_api_image_gets_the_validator_but_no_torch() -> None:
    """The submit-time validator's parsers are in the API's list; torch and the engine's trainers are not."""
    api = image_requirements("api")
    assert {"fastapi", "sqlalchemy", "celery", "boto3", "httpx"} <= api
    assert {"numpy", "onnx", "safetensors", "pillow"} <= api  # workers/compression/validate.py
    assert not api & {"torch", "torchvision", "torch-pruning", "onnxruntime", "onnx2torch", "timm"}
    assert {"torch", "onnx2torch", "onnxruntime", "torch-pruning", "fastapi", "celery"} <= image_requirements(
        "worker")
