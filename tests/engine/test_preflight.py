"""The engine's pre-flight: what it predicts matches what a job does, and it refuses what a job would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.engine.conftest import SliverNet, write_inputs
from tests.engine.model_files import export_onnx
from workers.compression import zoo
from workers.compression.config import JobConfig, L1Options, Target
from workers.compression.errors import InvalidConfig
from workers.compression.measure import count_macs
from workers.compression.methods.structured import prunable_structure, search_ratio
from workers.compression.preflight import job_verdict, run_preflight
from workers.compression.preflight_cli import main
from workers.compression.preflight_verdict import PREFLIGHT_VISIBLE


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random ResNet-20 weights (CIFAR shape, 10 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet20") / "resnet20.safetensors"
    model = zoo.build("resnet20", num_classes=10, input_shape=(3, 32, 32))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def config(**fields: object) -> JobConfig:
    """An l1 job on the zoo's ResNet-20 with the given fields."""
    return JobConfig.model_validate({"method": "l1", "architecture": "resnet20",
                                     "target": {"pruning_ratio": 0.5}, **fields})


def test_a_flops_target_lands_where_the_jobs_bisection_does(resnet20: Path) -> None:
    """The fitted search meets the target and lands within 2% of the reduction the job's search reaches."""
    answer = run_preflight(resnet20, config(target={"flops_reduction": 2.0}),
                           targets=[Target(pruning_ratio=0.3)], estimate=False)
    assert answer["ok"], answer["problems"]
    assert answer["input_shape"] == [3, 32, 32]  # the zoo's CIFAR shape, with no dataset
    predicted, ratio = answer["targets"]
    assert predicted["flops_reduction"] >= 2.0
    model = zoo.build("resnet20", num_classes=10, input_shape=(3, 32, 32))
    model.load_state_dict(load_file(str(resnet20)))
    example = torch.zeros(1, 3, 32, 32)
    structure = prunable_structure(model, example, L1Options(), method="l1", exact=False)
    _, job = search_ratio(model, structure, example, 2.0, None)
    assert abs(predicted["flops_reduction"] - job) / job <= 0.02
    assert ratio["flops"] > predicted["flops"]  # 0.3 keeps more than the 2x target's ratio
    assert answer["flops"] == count_macs(model, (3, 32, 32))
    assert answer["cost"]["flops_per_sample"] == 2 * answer["flops"]  # the cost estimator's count (issue 15)
    assert answer["onnx_roundtrip"]["passed"]


def test_out_of_reach_targets_are_problems_with_the_jobs_code(resnet20: Path) -> None:
    """A reduction no ratio reaches, and a target the method does not take: ok false, invalid_config."""
    answer = run_preflight(resnet20, config(target={"flops_reduction": 500.0}),
                           targets=[Target(sparsity=0.5)], estimate=False)
    assert not answer["ok"]
    assert [p["code"] for p in answer["problems"]] == ["invalid_config", "invalid_config"]
    assert [t["reachable"] for t in answer["targets"]] == [False, False]
    assert "out of reach" in answer["targets"][0]["reason"]


def test_a_ratio_that_barely_cuts_flops_is_a_problem_as_in_the_job(tmp_path: Path) -> None:
    """Ratio 0.5 on a model whose prunable groups hold a sliver of its compute: pre-flight marks the target
    unreachable with the job's reason, instead of predicting a ~1.00x result."""
    torch.manual_seed(0)
    model = export_onnx(SliverNet(4).eval(), tmp_path / "sliver.onnx", (3, 8, 8))
    l1 = JobConfig.model_validate({"method": "l1", "target": {"pruning_ratio": 0.5}})
    answer = run_preflight(model, l1, estimate=False)
    assert not answer["ok"]
    assert [p["code"] for p in answer["problems"]] == ["invalid_config"]
    assert "fewer FLOPs as measured" in answer["targets"][0]["reason"]


def test_a_model_with_nothing_to_prune_is_refused_as_the_job_refuses_it(tmp_path: Path) -> None:
    """A classifier-only model: pre-flight raises the refusal the job's group analysis raises, and the
    job's own verdict records it with a code pre-flight covers."""
    model = export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), tmp_path / "c.onnx", (3, 2, 2))
    tpp = JobConfig.model_validate({"method": "tpp", "target": {"pruning_ratio": 0.5}})
    with pytest.raises(InvalidConfig, match="no channel group that tpp can prune") as refused:
        run_preflight(model, tpp)
    example = torch.zeros(1, 3, 2, 2)
    with pytest.raises(InvalidConfig) as job:
        prunable_structure(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), example, L1Options(), method="tpp",
                           exact=True)
    assert refused.value.message == job.value.message
    assert refused.value.code in PREFLIGHT_VISIBLE


def test_a_job_verdict_passes_with_the_dataset_and_the_cli_prints_json(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]
                                                                        ) -> None:
    """A job's own pre-flight on its inputs passes; `secateur preflight --json` prints the same answer."""
    model, dataset = write_inputs(tmp_path)
    verdict, refusal = job_verdict(model, dataset, JobConfig.model_validate(
        {"method": "l1", "target": {"pruning_ratio": 0.5}}))
    assert (verdict["ok"], refusal) == (True, None)
    code = main(["--model", str(model), "--dataset", str(dataset), "--method", "l1", "--pruning-ratio", "0.5",
                 "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert (code, answer["ok"], answer["dataset_checked"]) == (0, True, True)
    assert answer["estimate_s"] > 0
