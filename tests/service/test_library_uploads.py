"""POST /jobs with models named by their library: timm/torchvision weights and Hugging Face archives,
and the archives that must never be built (remote code, pickles) refused with a 4xx and a reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save

from tests.engine.hf_files import tiny_vit, write_archive
from tests.service.conftest import npz_dataset

pytestmark = pytest.mark.anyio

HF_CONFIG = {"method": "magnitude", "architecture": "hf", "target": {"sparsity": 0.5}}


def _archive(tmp_path: Path, **extra: Any) -> bytes:
    """Returns a valid tiny ViT checkpoint archive, with `extra` members added or replaced."""
    config, state = tiny_vit()
    files = {"config.json": config, "model.safetensors": state, **extra}
    return write_archive(tmp_path / "ckpt.zip", files).read_bytes()


async def _submit(
    make_api: Callable[..., Any], model: bytes, config: dict[str, Any], filename: str = "ckpt.zip"
) -> Any:
    """Submits with the submit-time sandboxed validation on."""
    async with make_api(validate_uploads=True) as api:
        files = {"model": (filename, model), "dataset": ("data.npz", npz_dataset())}
        response = await api.client.post("/jobs", files=files, data={"config": json.dumps(config)})
        return response, api.job_count(), api.stored_files()


async def test_hf_archive_is_accepted(make_api: Callable[..., Any], tmp_path: Path) -> None:
    """A checkpoint archive with `architecture: hf` is queued, its format recorded as hf."""
    response, jobs, _ = await _submit(make_api, _archive(tmp_path), HF_CONFIG)
    assert response.status_code == 202, response.text
    assert jobs == 1


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            {
                "config.json": {
                    "model_type": "vit",
                    "auto_map": {"AutoModelForImageClassification": "m.Model"},
                }
            },
            "auto_map",
        ),
        ({"modeling_vit.py": b"import os; os.system('id')"}, "holds code"),
        ({"pytorch_model.bin": b"\x80\x04\x95."}, "pickled weights"),
    ],
)
async def test_hf_archive_with_code_is_refused(
    make_api: Callable[..., Any], tmp_path: Path, extra: dict[str, Any], reason: str
) -> None:
    """Remote code (auto_map, .py files) and pickles are a 4xx with a code and a reason; nothing stays."""
    response, jobs, stored = await _submit(make_api, _archive(tmp_path, **extra), HF_CONFIG)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"] == "invalid_model"
    assert reason in response.json()["error"]["message"]
    assert (jobs, stored) == (0, [])


async def test_archive_without_hf_architecture_is_refused(
    make_api: Callable[..., Any], tmp_path: Path
) -> None:
    """A checkpoint archive needs `architecture: hf`: the message says so."""
    config = {**HF_CONFIG, "architecture": "timm/resnet18"}
    response, jobs, _ = await _submit(make_api, _archive(tmp_path), config)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_config"
    assert '"hf"' in response.json()["error"]["message"]
    assert jobs == 0


async def test_library_weights_are_accepted(make_api: Callable[..., Any]) -> None:
    """safetensors weights for `timm/<model>` pass the header checks at submit; the worker fits them."""
    weights = save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(4, 8)})
    config = {**HF_CONFIG, "architecture": "timm/resnet18"}
    response, jobs, _ = await _submit(make_api, weights, config, "w.safetensors")
    assert response.status_code == 202, response.text
    assert jobs == 1
