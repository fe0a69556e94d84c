"""The API image's requirement set runs the submit-time validator on every accepted format, without torch.

Issue 13: the image used to leave numpy/onnx/safetensors/pillow out, so every validated POST /jobs was a
500 (`validator_unavailable`). Here the real child (`python -m workers.compression.validate`, as
service/jobs/sandbox.py runs it) is run in a venv built from `scripts/image_requirements.py api`.
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import onnx
import pytest

from tests.deploy.conftest import ApiInstall
from tests.security.uploads import image_zip, linear_onnx, mlp_safetensors, npz_dataset

pytestmark = pytest.mark.timeout(900)  # a clean clone builds the API venv once (about a minute)


def hf_archive() -> bytes:
    """A Hugging Face checkpoint archive as the API sees it: config.json and model.safetensors in a zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", json.dumps({"model_type": "vit", "num_labels": 2}))
        archive.writestr("model.safetensors", mlp_safetensors())
    return buffer.getvalue()


def validate(api: ApiInstall, model: Path, dataset: Path, *extra: str) -> dict[str, Any]:
    """Runs the validator child in the API environment; returns its verdict line."""
    argv = [str(api.python), "-m", "workers.compression.validate", "--model", str(model),
            "--dataset", str(dataset), "--memory-bytes", str(2**31), "--cpu-s", "60", *extra]
    done = subprocess.run(argv, env=api.env(), cwd=model.parent, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    verdict: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return verdict


def test_the_api_environment_has_no_torch(api_install: ApiInstall, tmp_path: Path) -> None:
    probe = "import importlib.util as u, service; print(u.find_spec('torch') is None, service.__file__)"
    done = subprocess.run([str(api_install.python), "-c", probe], env=api_install.env(), cwd=tmp_path,
                          capture_output=True, text=True, check=True, timeout=60)
    no_torch, where = done.stdout.split()
    assert no_torch == "True"
    assert Path(where).is_relative_to(api_install.site)  # the installed wheel, not the checkout


@pytest.mark.parametrize(("model", "dataset", "architecture", "model_format", "dataset_format"), [
    ("onnx", "npz", None, "onnx", "npz"),
    ("safetensors", "npz", "mlp", "safetensors", "npz"),
    ("safetensors", "zip", "mlp", "safetensors", "zip"),
    ("hf", "zip", "hf", "hf", "zip"),
])
def test_the_validator_accepts_each_format_in_the_api_environment(
    api_install: ApiInstall, tmp_path: Path, model: str, dataset: str, architecture: str | None,
    model_format: str, dataset_format: str,
) -> None:
    files = {"onnx": lambda: linear_onnx().SerializeToString(), "safetensors": mlp_safetensors,
             "hf": hf_archive, "npz": npz_dataset, "zip": image_zip}
    (tmp_path / "model").write_bytes(files[model]())
    (tmp_path / "dataset").write_bytes(files[dataset]())
    extra = ["--architecture", architecture] if architecture else []
    verdict = validate(api_install, tmp_path / "model", tmp_path / "dataset", *extra)
    assert verdict["ok"] is True, verdict
    assert (verdict["model_format"], verdict["dataset_format"]) == (model_format, dataset_format)


def test_the_validator_still_refuses_bad_uploads_in_the_api_environment(
    api_install: ApiInstall, tmp_path: Path,
) -> None:
    """A model that cannot take the dataset's samples is the uploader's 4xx, not a broken validator."""
    onnx.save(linear_onnx(features=5), tmp_path / "model")
    (tmp_path / "dataset").write_bytes(npz_dataset(features=4))
    verdict = validate(api_install, tmp_path / "model", tmp_path / "dataset")
    assert verdict["ok"] is False
    assert verdict["code"] == "invalid_model"
