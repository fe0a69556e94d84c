"""The suite every registered pruning method must pass, on tiny models (one parametrization per method).

A new method is covered by registering it: targets are reached, unstructured masks survive optimizer
steps, structured removal of zeroed filters is exact, and a full `compress` run exports a verified ONNX
model with a complete report.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.engine.conftest import CLASSES, TinyResNet
from workers.compression.config import METHOD_OPTIONS, METHOD_TARGETS, JobConfig
from workers.compression.datasets import DatasetBundle
from workers.compression.hooks import Progress
from workers.compression.measure import count_macs, count_params
from workers.compression.methods import registry
from workers.compression.methods.base import MethodResult, PruneContext
from workers.compression.methods.masks import weight_layers
from workers.compression.methods.structured import recalibrate_after_removal
from workers.compression.pipeline import compress
from workers.compression.report import REPORT_KEYS, SIDE_KEYS
from workers.compression.training import Trainer

CPU = torch.device("cpu")
METHODS = registry.names()
STRUCTURED = [name for name in METHODS if registry.get(name).structured]
UNSTRUCTURED = [name for name in METHODS if not registry.get(name).structured]
FLOPS_TARGETED = [name for name in METHODS if "flops_reduction" in METHOD_TARGETS[name]]
RATIO = 0.5  # target sparsity or layerwise pruning ratio


def _target(name: str, value: float = RATIO) -> dict[str, float]:
    """Returns the method's natural target: sparsity for unstructured methods, else a pruning ratio."""
    return {"sparsity": value} if "sparsity" in METHOD_TARGETS[name] else {"pruning_ratio": value}


def _options(name: str, phase_epochs: float) -> dict[str, Any]:
    """Short extra phases (any `*_epochs` option; TPP's adaptive ramp capped at 20 steps per epoch, 0 for
    none) and frequent pruning events (`interval`) for tiny runs."""
    fields = METHOD_OPTIONS[name].model_fields
    options: dict[str, Any] = {key: phase_epochs for key in fields if key.endswith("_epochs")}
    if "max_reg_steps" in fields:
        options["max_reg_steps"] = round(20 * phase_epochs)
    if "interval" in fields:
        options["interval"] = 2
    return options


def _config(name: str, *, epochs: int, phase_epochs: float = 0.5, target: dict[str, float] | None = None,
            ) -> JobConfig:
    """Builds a valid job config for `name` on the tiny data."""
    return JobConfig.model_validate({
        "method": name, "target": target or _target(name), "options": _options(name, phase_epochs),
        "finetune": {"epochs": epochs, "batch_size": 32, "lr": 0.01},
    })


def _run(model: nn.Module, data: DatasetBundle, config: JobConfig, events: list[Progress] | None = None,
         ) -> MethodResult:
    """Runs the configured method on `model` with a CPU trainer."""
    trainer = Trainer(data=data, finetune=config.finetune, device=CPU, seed=0,
                      on_progress=None if events is None else events.append)
    method = registry.get(config.method)
    return method.run(PruneContext(model=model, data=data, config=config, device=CPU, trainer=trainer))


def _out_channels(model: nn.Module) -> dict[str, int]:
    """Maps each Conv/Linear layer name to its output channels."""
    return {name: int(weight.shape[0]) for name, _, weight in weight_layers(model)}


def _zero_set(model: nn.Module) -> torch.Tensor:
    """Returns a flat bool tensor, True where a Conv/Linear weight is exactly zero."""
    return torch.cat([(weight == 0).flatten() for _, _, weight in weight_layers(model)])


def test_the_baseline_methods_are_registered() -> None:
    """Once the baselines exist the suite must cover them (a missing module would silently shrink it)."""
    assert {"magnitude", "l1"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_reaches_its_target(name: str, trained_cnn: TinyResNet, image_data: DatasetBundle) -> None:
    """Sparsity within 1e-3 over prunable weights, or exactly ceil(PR*C) filters gone from pruned layers."""
    dense = _out_channels(trained_cnn)
    result = _run(trained_cnn, image_data, _config(name, epochs=1))
    assert result.model(image_data.normalize(image_data.x_val[:3])).shape == (3, CLASSES)
    if "sparsity" in METHOD_TARGETS[name]:
        counts = count_params(result.model)
        assert 1.0 - counts.prunable_nonzero / counts.prunable == pytest.approx(RATIO, abs=1e-3)
        return
    pruned = _out_channels(result.model)
    changed = {layer: (dense[layer], kept) for layer, kept in pruned.items() if kept != dense[layer]}
    assert changed, "no layer lost a filter"
    for channels, kept in changed.values():
        assert kept == max(1, channels - math.ceil(RATIO * channels))
    assert pruned["fc"] == CLASSES  # the classifier keeps its outputs


@pytest.mark.parametrize("name", FLOPS_TARGETED)
def test_reaches_a_flops_target(name: str, trained_cnn: TinyResNet, image_data: DatasetBundle) -> None:
    """A FLOPs-reduction target is met as measured (MACs before / after), within the counters' 2%."""
    shape = image_data.input_shape
    before = count_macs(trained_cnn, shape)
    config = _config(name, epochs=0, phase_epochs=0, target={"flops_reduction": 1.5})
    result = _run(trained_cnn, image_data, config)
    assert before / count_macs(result.model, shape) >= 1.5 * 0.98


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_masks_hold_through_optimizer_steps(
    name: str, trained_cnn: TinyResNet, image_data: DatasetBundle,
) -> None:
    """Zeros only grow between epoch ends, and after the last pruning event a whole epoch of SGD steps
    (momentum, weight decay) leaves them exactly as they were."""
    snapshots: list[torch.Tensor] = []
    config = _config(name, epochs=3)  # pruning ends at 60% of the steps: epoch 3 only finetunes
    trainer = Trainer(data=image_data, finetune=config.finetune, device=CPU, seed=0,
                      on_progress=lambda e: snapshots.append(_zero_set(trained_cnn)) if e.epoch_end else None)
    registry.get(name).run(PruneContext(model=trained_cnn, data=image_data, config=config, device=CPU,
                                        trainer=trainer))
    assert len(snapshots) == 3
    for earlier, later in itertools.pairwise(snapshots):
        assert bool((later | ~earlier).all()), "a pruned weight came back"
    assert torch.equal(snapshots[1], snapshots[2])
    assert float(snapshots[2].float().mean()) == pytest.approx(RATIO, abs=1e-3)


@pytest.mark.parametrize("name", STRUCTURED)
def test_removing_zeroed_filters_keeps_outputs(
    name: str, trained_cnn: TinyResNet, image_data: DatasetBundle,
) -> None:
    """With ceil(PR*C) filters of every conv already zero (weights and BN), L1 selects exactly those, and
    removing them with no training leaves the logits unchanged (for l1, which then re-estimates BatchNorm
    statistics, equal to the dense model's after the same re-estimation)."""
    model = trained_cnn
    with torch.no_grad():
        for conv, bn in ((model.stem[0], model.stem[1]), (model.conv1, model.bn1), (model.conv2, model.bn2),
                         (model.down[0], model.down[1])):
            assert isinstance(conv, nn.Conv2d)
            assert isinstance(bn, nn.BatchNorm2d)
            gone = torch.arange(conv.out_channels)[1::2]  # odd filters: ceil(0.5 * C) of them for even C
            conv.weight[gone] = 0.0
            bn.weight[gone] = 0.0
            bn.bias[gone] = 0.0
    x = image_data.normalize(image_data.x_val)
    config = _config(name, epochs=0, phase_epochs=0)
    dense = copy.deepcopy(model)
    if name == "l1":
        trainer = Trainer(data=image_data, finetune=config.finetune, device=CPU, seed=0)
        recalibrate_after_removal(dense, trainer)
    with torch.no_grad():
        reference = dense.eval()(x)
        assert (name == "l1") != torch.allclose(reference, model.eval()(x))  # the re-estimation shows
    params_before = count_params(model).params
    result = _run(model, image_data, config)
    assert count_params(result.model).params < params_before  # something was physically removed
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_compress_exports_a_verified_model_with_a_full_report(
    name: str, input_files: tuple[Path, Path], tmp_path: Path,
) -> None:
    """The whole pipeline on an ONNX upload: verified parity, complete report, target reached."""
    model_path, data_path = input_files
    result = compress(model_path=model_path, dataset_path=data_path, config=_config(name, epochs=1),
                      out_dir=tmp_path, device="cpu", threads=1)
    report = result.report
    assert set(REPORT_KEYS) <= set(report)
    for side in ("baseline", "pruned"):
        assert set(SIDE_KEYS) <= set(report[side])
    assert report["verification"]["passed"] is True
    assert abs(report["pruned"]["accuracy"] - report["pruned"]["ort_accuracy"]) <= 0.001
    assert report["baseline"]["accuracy"] > 0.8
    assert report["method"]["name"] == name
    if "sparsity" in METHOD_TARGETS[name]:
        assert report["target"]["achieved"]["sparsity"] == pytest.approx(RATIO, abs=1e-3)
        assert report["pruned"]["onnx_zstd_bytes"] < report["baseline"]["onnx_zstd_bytes"]
    else:
        assert report["pruned"]["params"] < report["baseline"]["params"]
        assert report["target"]["achieved"]["flops_reduction"] > 1.0
        assert report["pruned"]["onnx_bytes"] < report["baseline"]["onnx_bytes"]
