"""Session fixtures for packaging tests: the project's wheel, and the API image's environment with it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.venvs import api_venv, build_wheel, install_wheel

__all__ = ["ApiInstall", "api_install", "clean_env", "project_wheel"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment less PYTHONPATH, SECATEUR_* and AWS_* (nothing may point back at the checkout)."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("SECATEUR_", "AWS_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


@dataclass(frozen=True)
class ApiInstall:
    """The API image's requirements in a venv, and this session's wheel installed in a folder beside it."""

    python: Path
    site: Path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment that runs the installed project with the API venv's interpreter."""
        return clean_env({"PYTHONPATH": str(self.site), **(extra or {})})

    def secateur(self, *args: str) -> list[str]:
        """The argv of the installed `secateur` command in this environment."""
        return [str(self.python), "-m", "service.cli", *args]


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session from the working tree."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def api_install(project_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> ApiInstall:
    """The API image's environment (cached venv) with this session's wheel; no torch anywhere in it."""
    python = api_venv()
    site = tmp_path_factory.mktemp("api-site")
    install_wheel(python, project_wheel, target=site)
    return ApiInstall(python, site)
