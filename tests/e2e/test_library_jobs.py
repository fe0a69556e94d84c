"""End to end with a model named by its library: timm weights through `POST /jobs` on `secateur serve`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.torch import save_file

from tests.e2e.conftest import embedded_server
from tests.integration.tiny_job import TinyJob
from workers.compression.architectures import parse_architecture
from workers.compression.library_models import build
from workers.compression.onnx_metadata import read_metadata

pytestmark = pytest.mark.e2e

ARCHITECTURE = "timm/resnet10t"


def _timm_job(folder: Path) -> TinyJob:
    """Writes timm weights (random, 4 classes) and 24-px images the model is fed at 32 px."""
    folder.mkdir(parents=True)
    model = build(parse_architecture(ARCHITECTURE), num_classes=4, image_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x_train=rng.integers(0, 256, (32, 3, 24, 24), dtype=np.uint8),
             y_train=np.arange(32) % 4, x_val=rng.integers(0, 256, (16, 3, 24, 24), dtype=np.uint8),
             y_val=np.arange(16) % 4)
    config = {"method": "l1", "architecture": ARCHITECTURE, "target": {"pruning_ratio": 0.5},
              "finetune": {"epochs": 1, "batch_size": 16}, "data": {"image_size": 32}}
    return TinyJob(folder / "weights.safetensors", folder / "data.npz", json.dumps(config))


def test_timm_weights_through_the_api(tmp_path: Path) -> None:
    """POST timm weights → succeeded → the ONNX says how to feed it (the model's preprocessing at 32 px)."""
    job = _timm_job(tmp_path / "inputs")
    with embedded_server(tmp_path) as (api, _):
        job_id = api.submit(job)["id"]
        finished = api.wait_finished(job_id, timeout_s=300)
        assert finished["status"] == "succeeded", finished["error"]
        report = json.loads(api.download(f"/jobs/{job_id}/report"))
        assert report["inputs"]["architecture"] == ARCHITECTURE
        assert report["pruned"]["flops"] < report["baseline"]["flops"]
        fed, _ = read_metadata(onnx.load_from_string(api.download(f"/jobs/{job_id}/artifacts/model.onnx")))
        assert fed == report["inputs"]["preprocessing"]
        assert (fed["image_size"], fed["source"]) == (32, "timm's config for resnet10t")


def test_real_world_datasets_through_the_api(tmp_path: Path) -> None:
    """An ImageNet-style zip (mixed sizes and formats, gray among them, one corrupt file, no val/) and a
    Hugging Face Parquet file train a timm model at 64 px through POST /jobs to verified ONNX models; the
    reports show the split and the skipped file."""
    from tests.engine.image_archives import CLASSES, imagenet_members, write_archive, write_parquet

    folder = tmp_path / "inputs"
    folder.mkdir()
    model = build(parse_architecture(ARCHITECTURE), num_classes=len(CLASSES), image_size=64)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    config = json.dumps({"method": "l1", "architecture": ARCHITECTURE, "target": {"pruning_ratio": 0.3},
                         "finetune": {"epochs": 1, "batch_size": 32}, "data": {"image_size": 64}})
    datasets = {"zip": write_archive(folder / "images.zip", "zip", imagenet_members()),
                "parquet": write_parquet(folder / "images.parquet")}
    with embedded_server(tmp_path) as (api, _):
        ids = {kind: api.submit(TinyJob(folder / "weights.safetensors", path, config))["id"]
               for kind, path in datasets.items()}
        reports = {}
        for kind, job_id in ids.items():
            finished = api.wait_finished(job_id, timeout_s=300)
            assert finished["status"] == "succeeded", (kind, finished["error"])
            reports[kind] = json.loads(api.download(f"/jobs/{job_id}/report"))
    for kind, report in reports.items():
        assert report["verification"]["passed"], kind
        assert report["inputs"]["input_shape"] == [3, 64, 64], kind
        assert report["inputs"]["split"]["val_from"] == "split", kind
    assert reports["zip"]["inputs"]["unreadable"] == ["train/cat/broken0.jpg"]
    assert reports["parquet"]["inputs"]["format"] == "parquet"
