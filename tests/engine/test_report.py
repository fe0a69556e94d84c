"""report.json holds every key DESIGN.md promises, with figures that are consistent with each other."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from workers.compression.config import JobConfig
from workers.compression.hooks import STAGES, Progress
from workers.compression.pipeline import CompressionResult, compress
from workers.compression.report import REPORT_KEYS, SIDE_KEYS

CONFIG = JobConfig.model_validate({
    "method": "magnitude", "target": {"sparsity": 0.5},
    "finetune": {"epochs": 2, "batch_size": 32, "lr": 0.01}, "options": {"interval": 2},
})


@pytest.fixture(scope="module")
def run(
    input_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
) -> tuple[CompressionResult, list[Progress], tuple[Path, Path]]:
    """One compression of the tiny ONNX model, shared by the tests of this module."""
    events: list[Progress] = []
    model_path, data_path = input_files
    result = compress(
        model_path=model_path, dataset_path=data_path, config=CONFIG, out_dir=tmp_path_factory.mktemp("out"),
        device="cpu", threads=1, on_progress=events.append,
    )
    return result, events, input_files


def _report(run: tuple[CompressionResult, list[Progress], tuple[Path, Path]]) -> dict[str, Any]:
    """Returns the report as written to disk."""
    return dict(json.loads(run[0].report_path.read_text()))


def test_writes_the_three_files(run: tuple[CompressionResult, list[Progress], tuple[Path, Path]]) -> None:
    """model.onnx, model.onnx.zst and report.json exist, and the returned dict is what is on disk."""
    result = run[0]
    assert result.onnx_path.is_file()
    assert result.onnx_zst_path.is_file()
    assert _report(run) == result.report


def test_every_design_key(run: tuple[CompressionResult, list[Progress], tuple[Path, Path]]) -> None:
    """Top-level keys, both sides, verification, history entries, environment, inputs, timings."""
    report = _report(run)
    assert set(REPORT_KEYS) <= set(report)
    for side in ("baseline", "pruned"):
        assert set(SIDE_KEYS) <= set(report[side])
        assert set(report[side]["latency_ms"]) == {"b1", "b64"}
        assert all(v > 0 for v in report[side]["latency_ms"].values())
        assert 0.0 <= report[side]["accuracy"] <= 1.0
        assert 0.0 <= report[side]["ort_accuracy"] <= 1.0
    assert {"max_abs_diff", "passed", "tolerance"} <= set(report["verification"])
    assert report["verification"]["passed"] is True
    assert {"phase", "epoch", "loss", "accuracy", "lr"} <= set(report["history"][0])
    assert len(report["history"]) == 2
    assert report["method"]["name"] == "magnitude"
    assert report["method"]["options"]["interval"] == 2
    assert {"python", "torch", "onnx", "onnxruntime", "torch_pruning", "device", "threads"} <= set(
        report["environment"]
    )
    assert report["environment"]["device"] == "cpu"
    assert report["layers"]
    stages = {"loading", "evaluating", "exporting", "verifying", "measuring", "total"}
    assert stages <= set(report["timings_s"])
    assert report["config"] == CONFIG.model_dump(mode="json")
    assert report["target"]["requested"] == {"sparsity": 0.5}


def test_inputs_are_hashed(run: tuple[CompressionResult, list[Progress], tuple[Path, Path]]) -> None:
    """The report names its inputs by SHA-256, so a result can be traced to its files."""
    report, (model_path, data_path) = _report(run), run[2]
    assert report["inputs"]["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert report["inputs"]["dataset_sha256"] == hashlib.sha256(data_path.read_bytes()).hexdigest()
    assert report["inputs"]["model_format"] == "onnx"


def test_figures_are_consistent(run: tuple[CompressionResult, list[Progress], tuple[Path, Path]]) -> None:
    """Sparsity reached, zeros shrink the zstd file, baseline accuracy is the trained model's, sizes match."""
    report, result = _report(run), run[0]
    baseline, pruned, achieved = report["baseline"], report["pruned"], report["target"]["achieved"]
    assert baseline["accuracy"] > 0.8
    assert achieved["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned["params"] == baseline["params"]  # unstructured: same tensors, more zeros
    assert pruned["nonzero_params"] < baseline["nonzero_params"]
    assert achieved["compression_ratio"] == pytest.approx(baseline["params"] / pruned["nonzero_params"])
    assert pruned["onnx_zstd_bytes"] < baseline["onnx_zstd_bytes"]
    assert pruned["onnx_bytes"] == result.onnx_path.stat().st_size
    assert pruned["onnx_zstd_bytes"] == result.onnx_zst_path.stat().st_size
    assert pruned["accuracy"] == report["history"][-1]["accuracy"]
    assert report["notes"]  # the honest caveat about unstructured zeros and dense runtimes


def test_progress_events(run: tuple[CompressionResult, list[Progress], tuple[Path, Path]]) -> None:
    """Events name known stages, fractions never go back and end at 1."""
    events = run[1]
    assert {e.stage for e in events} <= set(STAGES)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert sum(e.epoch_end for e in events) == 2
