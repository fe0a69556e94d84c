"""`secateur compress`: exit 0 with three files, exit 2 with one line for bad input, exit 1 for a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.compression import cli

ROOT = Path(__file__).resolve().parents[2]


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """Returns a compress command line for the tiny inputs, one cheap epoch of magnitude pruning."""
    return [
        "compress", "--model", str(model), "--dataset", str(data), "--method", "magnitude",
        "--target-sparsity", "0.5", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
        "--out", str(out), *extra,
    ]


def _one_error_line(err: str, code: str) -> None:
    """Asserts that stderr ends with the only `error: <code>: ...` line (progress lines may precede it)."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert lines[-1].startswith(f"error: {code}: ")


def test_good_run_exits_0(
    input_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Writes the three files and a summary on stdout; progress goes to stderr."""
    model, data = input_files
    assert cli.main(_args(model, data, tmp_path / "out")) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["model.onnx", "model.onnx.zst", "report.json"]
    out, err = capsys.readouterr()
    assert "accuracy" in out
    assert "pruning" in err  # plain progress lines, stderr is not a terminal here


def test_config_file_with_flags_overriding(
    input_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """--config supplies fields, flags win, and the leading `compress` word is optional."""
    model, data = input_files
    config = tmp_path / "job.json"
    config.write_text(json.dumps({
        "method": "magnitude", "target": {"sparsity": 0.9}, "seed": 3,
        "finetune": {"epochs": 5, "batch_size": 64, "schedule": "cosine"}, "options": {"interval": 1},
    }))
    args = _args(model, data, tmp_path / "out", "--config", str(config))[1:]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["target"]["sparsity"] == 0.5  # the flag
    assert report["config"]["finetune"]["epochs"] == 1  # the flag
    assert report["config"]["finetune"]["schedule"] == "cosine"  # the file
    assert report["config"]["seed"] == 3  # the file
    assert report["method"]["options"]["interval"] == 1  # the file


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (["--model", "/nonexistent/model.onnx"], "invalid_model"),
        (["--dataset", "/nonexistent/data.npz"], "invalid_dataset"),
        (["--method", "l1"], "invalid_config"),  # l1 takes no sparsity target
        (["--method", "prune-it-all"], "invalid_config"),
        (["--epochs", "many"], "invalid_config"),
        (["--target-sparsity", "1.5"], "invalid_config"),
        (["--pruning-ratio", "0.5"], "invalid_config"),  # two targets at once
        (["--device", "tpu"], "invalid_config"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    input_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    change: list[str], code: str,
) -> None:
    """Each refusal is one line with a stable code, and nothing is written."""
    model, data = input_files
    assert cli.main(_args(model, data, tmp_path / "out", *change)) == 2
    _one_error_line(capsys.readouterr().err, code)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_missing_required_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's own complaints are one typed line too, not usage text and exit 2 from argparse."""
    assert cli.main(["compress", "--model", "m.onnx"]) == 2
    _one_error_line(capsys.readouterr().err, "invalid_config")


def test_unexpected_failure_exits_1(
    input_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug is exit 1 with a one-line `error: internal: ...`."""
    from workers.compression import pipeline

    def crash(**_kwargs: object) -> None:
        """Fails like a bug would."""
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pipeline, "compress", crash)
    model, data = input_files
    assert cli.main(_args(model, data, tmp_path / "out")) == 1
    _one_error_line(capsys.readouterr().err, "internal")


def test_module_entry_point_in_a_subprocess(input_files: tuple[Path, Path], tmp_path: Path) -> None:
    """`python -m workers.compression compress ...` runs the same CLI: a bad dataset exits 2, one line."""
    model, _ = input_files
    bad = tmp_path / "data.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "workers.compression", *_args(model, bad, tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, "invalid_dataset")


SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10_subset.npz").is_file(), reason="needs ../shared/data")
@pytest.mark.parametrize(
    "method", [["l1", "--pruning-ratio", "0.5"], ["magnitude", "--target-sparsity", "0.9"]],
)
def test_real_resnet20(method: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 2's "Done when" 1 and 2 on real CIFAR-10: the right architecture (0.9164), verified ONNX,
    fewer FLOPs for l1, and a zstd file under 0.35x the baseline's for 90% magnitude sparsity."""
    args = [
        "compress", "--model", str(SHARED / "cifar10_resnet20.safetensors"), "--architecture", "resnet20",
        "--dataset", str(SHARED / "cifar10_subset.npz"), "--method", *method, "--epochs", "2",
        "--out", str(tmp_path),
    ]
    assert cli.main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    baseline, pruned = report["baseline"], report["pruned"]
    assert baseline["accuracy"] == pytest.approx(0.9164, abs=1e-4)
    assert report["verification"]["passed"] is True
    assert pruned["accuracy"] == pytest.approx(pruned["ort_accuracy"], abs=0.001)
    assert pruned["latency_ms"]["b1"] > 0
    if method[0] == "l1":
        assert pruned["flops"] < baseline["flops"] / 1.9
    else:
        assert pruned["onnx_zstd_bytes"] < 0.35 * baseline["onnx_zstd_bytes"]


@pytest.mark.parametrize(
    ("method", "sparse"),
    [(["l1", "--pruning-ratio", "0.5"], False), (["magnitude", "--target-sparsity", "0.9"], True)],
)
def test_onnx_model_trained_in_the_test(
    method: list[str], sparse: bool, input_files: tuple[Path, Path], tmp_path: Path,
) -> None:
    """Issue 2's "Done when" 3: the same commands on an ONNX export of a model trained here (not the zoo)."""
    model, data = input_files
    args = [
        "compress", "--model", str(model), "--dataset", str(data), "--method", *method, "--epochs", "2",
        "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path),
    ]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    baseline, pruned = report["baseline"], report["pruned"]
    assert report["inputs"]["model_format"] == "onnx"
    assert report["verification"]["passed"] is True
    assert pruned["ort_accuracy"] == pytest.approx(pruned["accuracy"], abs=0.001)
    assert baseline["accuracy"] > 0.8  # the tiny CNN really was trained (chance is 0.25)
    if sparse:
        assert pruned["nonzero_params"] < 0.2 * baseline["nonzero_params"]
        assert pruned["onnx_zstd_bytes"] < 0.5 * baseline["onnx_zstd_bytes"]
    else:
        assert pruned["flops"] < baseline["flops"]
        assert pruned["params"] < baseline["params"]
