"""The engine's entry point: load → evaluate the baseline → prune and finetune → export → verify → measure.

`compress` is what the CLI and the service's runner call. It does no I/O beyond reading its two inputs
and writing `out_dir/{model.onnx, model.onnx.zst, report.json}`; progress, cancellation and checkpoints
go through the caller's hooks.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.compression import datasets, model_io, sniff
from workers.compression.config import JobConfig
from workers.compression.datasets import DatasetBundle
from workers.compression.errors import InvalidConfig, InvalidDataset, InvalidModel
from workers.compression.export import export_onnx, finalize, verify, write_zstd
from workers.compression.hooks import CheckpointStore, Progress, ProgressCallback
from workers.compression.measure import count_macs, count_params, latency_ms
from workers.compression.methods import registry
from workers.compression.methods.base import PruneContext
from workers.compression.onnx_metadata import write_metadata
from workers.compression.preprocessing import Preprocessing
from workers.compression.report import Side, build_report, environment, sha256_file
from workers.compression.shared_baseline import BaselineCache, baseline_key, measure_once
from workers.compression.training import Trainer, seed_everything

__all__ = ["OUTPUT_FILES", "TRAIN_SPAN", "CompressionResult", "LoadedInputs", "check_exportable",
           "check_fits", "compress", "load_inputs", "resolve_device"]

OUTPUT_FILES = ("model.onnx", "model.onnx.zst", "report.json")
MAX_ONNX_WEIGHT_BYTES = (2 << 30) - (64 << 20)  # protobuf's limit, less room for the graph itself
TRAIN_SPAN = (0.05, 0.85)  # share of the whole job that the method's training phases cover
# Where each non-training stage starts, as a share of the whole job (training fills TRAIN_SPAN).
STAGE_START = {"loading": 0.0, "evaluating": 0.02, "pruning": TRAIN_SPAN[0], "exporting": TRAIN_SPAN[1],
               "verifying": 0.88, "measuring": 0.92}


@dataclass(frozen=True)
class CompressionResult:
    """What `compress` wrote: the verified ONNX model, its zstd copy, and the report (also as a dict)."""

    onnx_path: Path
    onnx_zst_path: Path
    report_path: Path
    report: dict[str, Any]


class _StageClock:
    """Passes progress events on to the caller and times each stage from the events it sees."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.timings: dict[str, float] = {}
        self.started = self.mark = time.perf_counter()
        self.stage: str | None = None

    def __call__(self, event: Progress) -> None:
        """Records a stage change (a training event may start 'pruning' or 'finetuning') and forwards."""
        self._switch(event.stage)
        if self.on_progress is not None:
            self.on_progress(event)

    def enter(self, stage: str, metrics: dict[str, float] | None = None) -> None:
        """Starts a pipeline stage; 'measuring' is reported to the caller as part of 'verifying'."""
        self._switch(stage)
        if self.on_progress is not None:
            shown = "verifying" if stage == "measuring" else stage
            self.on_progress(Progress(stage=shown, fraction=STAGE_START[stage], metrics=metrics or {}))

    def finish(self) -> dict[str, float]:
        """Closes the last stage and returns seconds per stage plus the total."""
        self._switch(None)
        return {**self.timings, "total": time.perf_counter() - self.started}

    def _switch(self, stage: str | None) -> None:
        """Adds the time since the last switch to the stage that was running."""
        if stage == self.stage:
            return
        now = time.perf_counter()
        if self.stage is not None:
            self.timings[self.stage] = self.timings.get(self.stage, 0.0) + now - self.mark
        self.stage, self.mark = stage, now


def resolve_device(name: str) -> torch.device:
    """Maps 'auto' | 'cpu' | 'cuda[:N]' to a device; 'auto' is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise InvalidConfig(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidConfig(f"device {name!r} was requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def check_exportable(model: nn.Module) -> None:
    """Refuses a model whose weights cannot fit one ONNX file (protobuf stops at 2 GiB), before any work."""
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weights > MAX_ONNX_WEIGHT_BYTES:
        raise InvalidModel(f"the model holds {weights / 2**30:.2f} GiB of weights; an exported ONNX file "
                           f"holds at most {MAX_ONNX_WEIGHT_BYTES / 2**30:.2f} GiB (protobuf's 2 GiB limit): "
                           "use a smaller variant of the architecture")


def _require_file(path: Path, what: str, error: type[InvalidModel] | type[InvalidDataset]) -> None:
    """Refuses a missing input early, with the path in the message."""
    if not path.is_file():
        raise error(f"the {what} file {str(path)!r} does not exist or is not a regular file")


def check_fits(model: nn.Module, data: DatasetBundle) -> None:
    """Runs two validation samples through the model: it must accept them and return (B, classes) logits."""
    x, _ = next(data.batches("val", 2, shuffle=False))
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        raise InvalidDataset(
            f"the model does not accept the dataset's samples of shape {data.input_shape}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidModel(f"the model must return one logits tensor of shape (batch, classes); got {got}")
    if out.shape[1] < data.num_classes:
        raise InvalidDataset(
            f"the dataset has labels up to {data.num_classes - 1} but the model outputs only "
            f"{out.shape[1]} classes"
        )


@dataclass(frozen=True)
class LoadedInputs:
    """The model and the data it is fed, with how it is fed (for the report and the ONNX metadata)."""

    model: nn.Module
    data: DatasetBundle
    model_format: str
    preprocessing: dict[str, Any]


def load_inputs(model_path: Path, dataset_path: Path, config: JobConfig) -> LoadedInputs:
    """Loads and cross-checks the dataset and the model (CPU, eval mode), the data fitted to the model's
    own preprocessing (its library's defaults, overridden by the job's `data` options)."""
    _require_file(model_path, "model", InvalidModel)
    _require_file(dataset_path, "dataset", InvalidDataset)
    model_format = sniff.sniff_model_file(model_path)
    preprocessing = model_io.model_preprocessing(model_path, config.architecture).overridden(config.data)
    data = datasets.load_dataset(dataset_path, config.data, preprocessing=preprocessing, seed=config.seed)
    loaded = model_io.load_model(
        model_path, architecture=config.architecture, input_shape=data.input_shape,
        num_classes=data.num_classes,
    )
    loaded.module.eval()
    check_exportable(loaded.module)
    check_fits(loaded.module, data)
    return LoadedInputs(loaded.module, data, model_format, _fed(preprocessing, data))


def _fed(preprocessing: Preprocessing, data: DatasetBundle) -> dict[str, Any]:
    """Returns what the model is really fed: the resolved preprocessing with the data's own size, scale
    and statistics filled in where the model left them open."""
    record = preprocessing.as_dict()
    shape = data.input_shape
    record |= {"input_shape": list(shape), "layout": "NCHW" if len(shape) == 3 else "flat",
               "scale": data.scale, "mean": list(data.mean), "std": list(data.std),
               "image_size": shape[-1] if len(shape) == 3 else None,
               "channels": shape[0] if len(shape) == 3 else None,
               "formula": "(x * scale - mean) / std per channel, after resize + center crop"}
    return record


def _measure_side(
    model: nn.Module, onnx_path: Path, data: DatasetBundle, device: torch.device, threads: int,
) -> dict[str, Any]:
    """Verifies an exported model and counts what does not depend on the other side (latency comes later)."""
    return {
        "verification": verify(model, onnx_path, data, device=device, threads=threads),
        "counts": count_params(model),
        "macs": count_macs(model, data.input_shape),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_zstd_bytes": write_zstd(onnx_path, onnx_path.with_name(onnx_path.name + ".zst")),
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes JSON atomically (temp file + rename), so a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def compress(
    *,
    model_path: Path,
    dataset_path: Path,
    config: JobConfig,
    out_dir: Path,
    device: str = "auto",
    threads: int = 1,
    on_progress: ProgressCallback | None = None,
    checkpoints: CheckpointStore | None = None,
    baseline_cache: BaselineCache | None = None,
) -> CompressionResult:
    """Compresses one model as `config` says and writes the verified ONNX, its zstd copy and report.json.

    Raises CompressionError subclasses for bad input, JobStopped when `on_progress` raised it.
    Resumes training from `checkpoints` when they hold state from an earlier attempt.
    Takes the dense baseline's measurement from `baseline_cache` when it holds one for these inputs.
    """
    clock = _StageClock(on_progress)
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    seed_everything(config.seed)
    clock.enter("loading")
    method = registry.get(config.method)  # an unavailable method fails before any heavy work
    loaded = load_inputs(model_path, dataset_path, config)
    model, data = loaded.model.to(dev), loaded.data
    inputs = {
        "model_sha256": sha256_file(model_path), "model_bytes": model_path.stat().st_size,
        "model_format": loaded.model_format, "architecture": config.architecture,
        "dataset_sha256": sha256_file(dataset_path), "dataset_bytes": dataset_path.stat().st_size,
        "input_shape": list(data.input_shape), "num_classes": data.num_classes,
        "train_samples": data.train_samples, "val_samples": data.val_samples, **data.facts,
        "normalization": {"mean": list(data.mean), "std": list(data.std), "scale": data.scale},
        "preprocessing": loaded.preprocessing, "class_names": data.class_names,
    }
    with tempfile.TemporaryDirectory(prefix="secateur-baseline-") as tmp:
        # The dense model is exported, verified and measured up front: a model that cannot round-trip
        # through ONNX fails in seconds, before any training is spent on it.
        clock.enter("evaluating", {"train_samples": data.train_samples, "val_samples": data.val_samples,
                                   "unreadable": len(data.facts.get("unreadable", []))})
        baseline_onnx = Path(tmp) / "baseline.onnx"
        export_onnx(model, data.input_shape, baseline_onnx)
        baseline = measure_once(baseline_cache, baseline_key(inputs, config),
                                lambda: _measure_side(model, baseline_onnx, data, dev, threads))
        clock.enter("pruning", {"baseline_accuracy": baseline["verification"].torch_accuracy})
        trainer = Trainer(
            data=data, finetune=config.finetune, device=dev, seed=config.seed,
            on_progress=clock, checkpoints=checkpoints, progress_span=TRAIN_SPAN,
        )
        result = method.run(PruneContext(model=model, data=data, config=config, device=dev, trainer=trainer))
        pruned_model = finalize(result.model).eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path, zst_path, report_path = (out_dir / name for name in OUTPUT_FILES)
        try:
            clock.enter("exporting")
            export_onnx(pruned_model, data.input_shape, onnx_path)
            write_metadata(onnx_path, loaded.preprocessing, data.class_names)
            clock.enter("verifying")
            pruned = _measure_side(pruned_model, onnx_path, data, dev, threads)
            clock.enter("measuring")
            latency = latency_ms(baseline_onnx, onnx_path, data.input_shape, threads=threads)
            report = build_report(
                config=config,
                baseline=Side(**baseline, latency_ms=latency["baseline"]),
                pruned=Side(**pruned, latency_ms=latency["pruned"]),
                result=result, history=trainer.history, environment=environment(dev, threads),
                inputs=inputs, timings_s=clock.finish(), latency_runs=latency["runs"],
            )
            _write_json(report_path, report)
        except BaseException:
            for path in (onnx_path, zst_path, report_path):  # no half-finished artifact survives
                path.unlink(missing_ok=True)
            raise
    if on_progress is not None:
        metrics = {"accuracy": report["pruned"]["accuracy"], "ort_accuracy": report["pruned"]["ort_accuracy"]}
        on_progress(Progress(stage="verifying", fraction=1.0, metrics=metrics))
    return CompressionResult(
        onnx_path=onnx_path, onnx_zst_path=zst_path, report_path=report_path, report=report,
    )
