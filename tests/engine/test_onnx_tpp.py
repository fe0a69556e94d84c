"""TPP on an ONNX export of a trained BN network trains like TPP on the network itself (issue 10, item 5).

The eval-mode export folds every BatchNorm into its conv; before the import put them back, TPP on the
ONNX ResNet lost most of its accuracy while regularizing and finetuning diverged to NaN at the default
learning rate, with an error that blamed the rate.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.engine.model_files import export_onnx
from workers.compression import zoo
from workers.compression.config import JobConfig
from workers.compression.pipeline import compress

DATA = Path(os.environ.get("SECATEUR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # how the CIFAR weights were trained

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "cifar10_resnet20.safetensors").exists(), reason=f"no data at {DATA}"),
]


@pytest.fixture
def resnet20_onnx(tmp_path: Path) -> Path:
    """The trained CIFAR ResNet-20 (option A) exported the usual way: eval mode, legacy exporter."""
    from safetensors.torch import load_file

    model = zoo.build("resnet20", num_classes=10, input_shape=(3, 32, 32))
    model.load_state_dict(load_file(str(DATA / "cifar10_resnet20.safetensors")))
    return export_onnx(model, tmp_path / "resnet20.onnx", (3, 32, 32))


@pytest.mark.timeout(1800)  # ~3 minutes on an idle CPU: at most 300 regularization steps, one finetune epoch
@pytest.mark.filterwarnings("ignore::UserWarning")  # onnx2torch's Slice indexing, torch's Slice folding note
def test_tpp_on_an_onnx_resnet_does_not_diverge(resnet20_onnx: Path, tmp_path: Path) -> None:
    """TPP, ratio 0.5, default options but a ramp capped at 300 steps, one finetune epoch: finishes and
    keeps the network working."""
    torch.set_num_threads(1)
    config = JobConfig.model_validate({
        "method": "tpp", "target": {"pruning_ratio": 0.5}, "finetune": {"epochs": 1}, "data": NORM,
        "options": {"max_reg_steps": 300},
    })
    result = compress(model_path=resnet20_onnx, dataset_path=DATA / "cifar10_subset.npz", config=config,
                      out_dir=tmp_path / "out", device="cpu")
    report = result.report
    assert report["baseline"]["accuracy"] > 0.9
    assert report["pruned"]["accuracy"] > 0.3  # one epoch after removing half the filters; NaN before
