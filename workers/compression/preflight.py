"""Pre-flight: what a job on this model would meet, found in seconds and without training.

It runs the job's own first steps with the engine's own code — loading and cross-checking the inputs
(`pipeline.load_inputs`), the method's group analysis (`structured.prunable_structure`,
`masks.select_prunable`), the target search and FLOPs counting (`structured.search_ratio`, `measure`),
and the dense ONNX export and verification (`export`) — on a few samples instead of the whole split.

A model that no job could prune (it does not load, does not fit the data, has no group the method can
prune, cannot be exported) is refused with the same typed error the job would fail with. Anything
narrower (a target out of reach, an export that differs from PyTorch) is answered with `ok: false` and
the problem's code, which is the code the job would fail with.

Without a dataset the input is the model's own (a fixed ONNX input, the architecture's image size, or
CIFAR's 3x32x32 for the zoo) and random pixels stand in for the data: no accuracy is measured anyway.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.compression import model_io, onnx_import, sniff
from workers.compression.config import METHOD_TARGETS, JobConfig, L1Options, MagnitudeOptions, Target
from workers.compression.datasets import ArrayBundle, DatasetBundle
from workers.compression.errors import ExportMismatch, InvalidConfig, UserError
from workers.compression.export import export_onnx, verify
from workers.compression.measure import count_macs, count_params
from workers.compression.methods.masks import select_prunable, weight_layers
from workers.compression.methods.structured import (
    Structure,
    importance,
    prunable_structure,
    ratio_shortfall,
    remove,
    select,
)
from workers.compression.methods.tpp_schedule import make_tpp_schedule
from workers.compression.methods.unstructured import MIN_KEEP
from workers.compression.module_cost import estimate_module_cost
from workers.compression.pipeline import check_exportable, check_fits, load_inputs
from workers.compression.preprocessing import Preprocessing

__all__ = ["CHECKED_SAMPLES", "UNSUPPORTED_MARKS", "job_verdict", "run_preflight"]

CHECKED_SAMPLES = 2  # validation samples the ONNX round trip is checked on (the job checks them all)
TIMED_SAMPLES = 4  # samples of the one timed training step behind the duration estimate
ZOO_SHAPE = (3, 32, 32)  # the zoo's CIFAR convention, assumed when no dataset says otherwise
# Marks of a reason to leave a group alone that is an op the analysis cannot model (not the method's choice):
# a group is unsupported when every one of its reasons carries one.
UNSUPPORTED_MARKS = ("cannot map", "unmodelled")
MAX_RATIO = 0.999  # the job's own bound: every prunable layer keeps a single channel
SEARCH_STEPS = 6  # removals a FLOPs target may take beyond the bound's (each costs a pruned copy)
FLOPS_TOLERANCE = 0.02  # a reduction this close above the target is taken
_MESSAGE = 1000  # characters of a refusal recorded on the job
_EVAL_PASSES = 3  # besides one per epoch: the baseline's and the pruned model's verification, and measuring


@dataclass(frozen=True)
class _Inputs:
    """The loaded model, the data it is checked on, and whether that data is the user's."""

    model: nn.Module
    data: DatasetBundle
    model_format: str
    from_dataset: bool


def run_preflight(model_path: Path, config: JobConfig, *, dataset_path: Path | None = None,
                  targets: Sequence[Target] = (), threads: int = 1, estimate: bool = True) -> dict[str, Any]:
    """Checks what a job with `config` (and each extra target) would meet; raises the job's own typed
    error when no job could prune the model."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    inputs = _load(model_path, dataset_path, config)
    model, data = inputs.model, inputs.data
    example = torch.zeros((1, *data.input_shape))  # (1, C, H, W) or (1, F)
    dense_params, dense_flops = count_params(model).params, count_macs(model, data.input_shape)
    # The cost estimator's figures (issue 15), on a copy: it moves the module to the meta device.
    cost = dataclasses.asdict(estimate_module_cost(copy.deepcopy(model), data.input_shape))
    wanted = [config.target, *[t for t in targets if t != config.target]]
    if config.method in ("l1", "tpp"):
        # Only the selection options matter here (TPP's schedule and L1's extra steps do not).
        selection = {k: v for k, v in config.options.items() if k in ("coupled", "round_to")}
        options = L1Options.model_validate(selection)
        structure = prunable_structure(model, example, options, method=config.method,
                                       exact=config.method == "tpp")
        analysis = _structured_analysis(structure)
        predicted = [_structured_target(model, example, structure, options, config.method, t) for t in wanted]
    else:
        analysis, predicted = _unstructured(model, config, wanted, dense_params, dense_flops)
    roundtrip = _roundtrip(model, data)
    problems = [{"code": InvalidConfig.code, "message": t["reason"]} for t in predicted if not t["reachable"]]
    if not roundtrip["passed"]:
        problems.append({"code": ExportMismatch.code, "message": roundtrip.pop("message")})
    seconds = _estimate_s(model, data, config) if estimate and inputs.from_dataset else None
    return {
        "ok": not problems, "problems": problems, "model_format": inputs.model_format,
        "input_shape": list(data.input_shape), "num_classes": data.num_classes,
        "dataset_checked": inputs.from_dataset, "params": dense_params, "flops": dense_flops, "cost": cost,
        **analysis,
        "targets": predicted, "onnx_roundtrip": roundtrip, "estimate_s": seconds,
        "estimate_basis": _basis(seconds, inputs.from_dataset), "elapsed_s": time.perf_counter() - started,
    }


def job_verdict(model_path: Path, dataset_path: Path, config: JobConfig, *,
                threads: int = 1) -> tuple[dict[str, Any], UserError | None]:
    """Pre-flight as a job runs it on its own inputs (no estimate): the verdict to record on the job, and
    the error to fail the job with when pre-flight refuses it (None when it passed)."""
    try:
        answer = run_preflight(model_path, config, dataset_path=dataset_path, threads=threads, estimate=False)
    except UserError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message[:_MESSAGE]}, exc
    if answer["ok"]:
        return {"ok": True, "elapsed_s": round(answer["elapsed_s"], 2)}, None
    problem = answer["problems"][0]
    error = ExportMismatch if problem["code"] == ExportMismatch.code else InvalidConfig
    return {"ok": False, "code": problem["code"], "message": problem["message"][:_MESSAGE]}, error(
        problem["message"])


def _load(model_path: Path, dataset_path: Path | None, config: JobConfig) -> _Inputs:
    """Loads the model as a job would: against the dataset when given, else against a stand-in."""
    if dataset_path is not None:
        loaded = load_inputs(model_path, dataset_path, config)
        return _Inputs(loaded.model, loaded.data, loaded.model_format, True)
    model_format = sniff.sniff_model_file(model_path)
    preprocessing = model_io.model_preprocessing(model_path, config.architecture).overridden(config.data)
    shape = _assumed_shape(model_path, model_format, preprocessing, config.architecture)
    built = model_io.load_model(model_path, architecture=config.architecture, input_shape=shape,
                                num_classes=2)
    module = built.module.eval()
    check_exportable(module)
    data = _stand_in(shape, built.num_classes, preprocessing)  # labels below the model's own outputs
    check_fits(module, data)
    return _Inputs(module, data, model_format, False)


def _assumed_shape(model_path: Path, model_format: str, preprocessing: Preprocessing,
                   architecture: str | None) -> tuple[int, ...]:
    """Returns the sample shape a model takes when no dataset tells it: its fixed ONNX input, or the
    architecture's image size (CIFAR's for the zoo), `data.image_size` first."""
    size, channels = preprocessing.image_size, preprocessing.channels or 3
    if model_format == "onnx":
        declared = onnx_import.signature(onnx_import.read_onnx(model_path))[0]
        if all(d is not None for d in declared) and (size is None or len(declared) != 3):
            return tuple(int(d or 0) for d in declared)
        if size is None or len(declared) != 3:
            raise InvalidConfig(f"the ONNX input's shape {declared} is not fixed: send a dataset, or set "
                                "data.image_size, so pre-flight knows what the model is fed")
        return (declared[0] or channels, size, size)
    if architecture == "mlp":
        raise InvalidConfig("an mlp takes the data's flattened samples: send the dataset to pre-flight it")
    if size is None:
        return ZOO_SHAPE
    return (channels, size, size)


def _stand_in(shape: tuple[int, ...], classes: int, preprocessing: Preprocessing) -> ArrayBundle:
    """Random samples of `shape` (uint8 pixels for images), normalized as the model expects."""
    generator = torch.Generator().manual_seed(0)
    n = CHECKED_SAMPLES
    labels = torch.arange(n, dtype=torch.int64) % classes
    if len(shape) == 3:
        x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)  # (N, C, H, W)
        norm = preprocessing.norm
        mean, std = norm if norm is not None and len(norm[0]) == shape[0] else ((0.5,) * shape[0],) * 2
        return ArrayBundle(num_classes=classes, mean=tuple(mean), std=tuple(std), scale=1 / 255,
                           augment=False, x_train=x, y_train=labels, x_val=x, y_val=labels)
    x = torch.randn((n, *shape), generator=generator)  # (N, F)
    return ArrayBundle(num_classes=classes, mean=(0.0,), std=(1.0,), scale=1.0, augment=False,
                       x_train=x, y_train=labels, x_val=x, y_val=labels)


def _structured_analysis(structure: Structure) -> dict[str, Any]:
    """The groups a filter-pruning method would prune, those it leaves alone, and ops it cannot model."""
    excluded = [{"layer": root, "reason": reason} for root, reason in structure.skipped]
    return {
        "groups": [{"root": g.root, "channels": g.channels, "layers": [m.name for m in g.layers],
                    "coupled": g.coupled} for g in structure.groups],
        "excluded": excluded,
        "unsupported": [e for e in excluded if all(any(mark in part for mark in UNSUPPORTED_MARKS)
                                                   for part in e["reason"].split("; "))],
    }


def _structured_target(model: nn.Module, example: torch.Tensor, structure: Structure, options: L1Options,
                       method: str, target: Target) -> dict[str, Any]:
    """Predicts params and FLOPs after removing the channels the job would remove for `target`."""
    entry: dict[str, Any] = {"target": target.model_dump(exclude_none=True)}
    if target.kind not in METHOD_TARGETS[method]:
        return entry | _unreachable(f"method {method!r} takes a target of {sorted(METHOD_TARGETS[method])}, "
                                    f"not {target.kind!r}")
    scores = [importance(model, g) for g in structure.groups]

    def pruned_at(ratio: float) -> dict[str, Any]:
        """Removes the job's channels at `ratio` from a copy; returns its counts."""
        plans = select(structure, scores, ratio, options.round_to)
        pruned = copy.deepcopy(model)
        remove(pruned, plans, example)
        counts = count_params(pruned)
        return {"pruning_ratio": ratio, "params": counts.params, "nonzero_params": counts.nonzero_params,
                "flops": count_macs(pruned, tuple(example.shape[1:])), "reachable": bool(plans),
                "reason": None if plans else "the ratio removes no channel from any group"}

    dense = count_macs(model, tuple(example.shape[1:]))
    if target.flops_reduction is None:
        assert target.pruning_ratio is not None  # METHOD_TARGETS admits only these two here
        predicted = pruned_at(target.pruning_ratio)
        reduction = dense / max(predicted["flops"], 1)
        shortfall = ratio_shortfall(target.pruning_ratio, reduction, structure, method)
        missed = shortfall is not None and predicted["reachable"]
        return entry | predicted | ({"reachable": False, "reason": shortfall} if missed else {})
    return entry | _flops_target(pruned_at, dense, target.flops_reduction, len(structure.groups))


def _flops_target(pruned_at: Callable[[float], dict[str, Any]], dense: int, target: float,
                  groups: int) -> dict[str, Any]:
    """Finds a uniform ratio that reaches a FLOPs reduction in a few removals, where the job bisects the
    same measured function to within 1e-3: MACs are fitted as a quadratic in the kept share (a layer keeps
    that share of its outputs, and often of its inputs) and solved for the goal, bisecting when the fit
    misleads. It stops within FLOPS_TOLERANCE above the target."""
    high = pruned_at(MAX_RATIO)
    flops = {0.0: float(dense), MAX_RATIO: float(high["flops"])}
    if dense / max(flops[MAX_RATIO], 1.0) < target:
        return _unreachable(f"flops_reduction {target:g}x is out of reach: pruning every prunable layer down "
                            f"to one channel gives {dense / max(flops[MAX_RATIO], 1.0):.2f}x ({groups} "
                            "prunable groups). Lower the target, or set options.coupled: true to prune "
                            "residual-coupled layers too.")
    goal = dense / target
    low_r, high_r, best, moved = 0.0, MAX_RATIO, high, ""
    for _ in range(SEARCH_STEPS):
        stuck = moved[-2:] in ("hh", "ll")  # the same bound moved twice: bisect, so the other one moves
        ratio = (low_r + high_r) / 2 if stuck else _fitted_ratio(flops, goal, low_r, high_r)
        if ratio in flops:  # rounding to whole channels: no nearer ratio to try
            break
        found = pruned_at(ratio)
        flops[ratio] = float(found["flops"])
        if flops[ratio] <= goal:
            high_r, best, moved = ratio, found, moved + "h"
            if flops[ratio] * (1 + FLOPS_TOLERANCE) >= goal:
                break
        else:
            low_r, moved = ratio, moved + "l"
    return best | {"flops_reduction": dense / max(flops[high_r], 1.0)}


def _fitted_ratio(flops: dict[float, float], goal: float, low_r: float, high_r: float) -> float:
    """Solves MACs(kept share) = goal on a quadratic through the measured points (with only the two ends,
    one through the far end with no linear term); the midpoint when no root lies inside the bracket."""
    kept = [1.0 - r for r in flops]
    macs = list(flops.values())
    if len(kept) >= 3:
        a, b, c = (float(v) for v in np.polyfit(kept, macs, 2))
    else:
        c = flops[MAX_RATIO]
        a, b = (flops[0.0] - c) / (1.0 - (1.0 - MAX_RATIO) ** 2), 0.0
    roots = np.roots([a, b, c - goal]) if abs(a) > 1e-12 else np.array([(goal - c) / b])
    inside = [1.0 - float(k.real) for k in roots
              if abs(k.imag) < 1e-9 and low_r < 1.0 - float(k.real) < high_r]
    return inside[0] if inside else (low_r + high_r) / 2


def _unstructured(model: nn.Module, config: JobConfig, targets: Sequence[Target], params: int,
                  flops: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The layers a sparsity method would prune, and the weights left per target (dense FLOPs stay)."""
    options = MagnitudeOptions.model_validate(config.options)  # WeightMom's extra fields do not matter here
    layers = select_prunable(model, options.exclude_layers)
    kept = {layer.name for layer in layers}
    analysis = {
        "groups": [{"root": layer.name, "weights": layer.weight.numel()} for layer in layers],
        "excluded": [{"layer": name, "reason": "options.exclude_layers"}
                     for name, _, _ in weight_layers(model) if name not in kept],
        "unsupported": [],
    }
    total = sum(layer.weight.numel() for layer in layers)
    ceiling = total - sum(min(MIN_KEEP, layer.weight.numel()) for layer in layers)
    predicted = []
    for target in targets:
        entry: dict[str, Any] = {"target": target.model_dump(exclude_none=True)}
        if target.sparsity is None:
            entry |= _unreachable(f"method {config.method!r} takes a sparsity target, not {target.kind!r}")
        else:
            removed = min(round(target.sparsity * total), ceiling)
            entry |= {"params": params, "nonzero_params": params - removed, "flops": flops,
                      "reachable": round(target.sparsity * total) <= ceiling, "reason": None}
            if not entry["reachable"]:
                entry["reason"] = (f"sparsity {target.sparsity:g} would leave a layer with no weight: at "
                                   f"most {ceiling / total:.4f} of the prunable weights can go")
        predicted.append(entry)
    return analysis, predicted


def _unreachable(reason: str) -> dict[str, Any]:
    """A target entry that no job could meet, with why."""
    return {"params": None, "nonzero_params": None, "flops": None, "reachable": False, "reason": reason}


def _roundtrip(model: nn.Module, data: DatasetBundle) -> dict[str, Any]:
    """Exports the dense model to ONNX and compares onnxruntime with PyTorch on a few samples."""
    x, y = next(data.batches("val", CHECKED_SAMPLES, shuffle=False))
    few = ArrayBundle(num_classes=data.num_classes, mean=(0.0,), std=(1.0,), scale=1.0, augment=False,
                      x_train=x, y_train=y, x_val=x, y_val=y)  # already normalized: mean 0, std 1
    with tempfile.TemporaryDirectory(prefix="secateur-preflight-") as tmp:
        path = Path(tmp) / "dense.onnx"
        export_onnx(model, data.input_shape, path)
        size = path.stat().st_size
        try:
            checked = verify(model, path, few, device=torch.device("cpu"), threads=torch.get_num_threads())
        except ExportMismatch as exc:
            return {"passed": False, "max_abs_diff": None, "samples": len(y), "onnx_bytes": size,
                    "message": exc.message}
    return {"passed": True, "max_abs_diff": checked.max_abs_diff, "samples": checked.samples,
            "onnx_bytes": size}


def _estimate_s(model: nn.Module, data: DatasetBundle, config: JobConfig) -> float:
    """Estimates the job's seconds on this machine's CPU: one timed training step and one timed forward
    pass per sample, times the samples every training epoch and evaluation pass will see."""
    x, y = next(data.batches("train", TIMED_SAMPLES, shuffle=False))
    trained = copy.deepcopy(model).train()  # the step must not move the real model's BatchNorm statistics
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(trained(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    train_per_sample = (time.perf_counter() - start) / len(y)
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    eval_per_sample = (time.perf_counter() - start) / len(y)
    epochs = float(config.finetune.epochs)
    if config.method == "tpp":  # its regularization phase at most, in steps (tpp_schedule.py)
        steps = make_tpp_schedule(config.method_options(), groups=1).max_steps
        epochs += steps * config.finetune.batch_size / max(data.train_samples, 1)
    train_s = epochs * data.train_samples * train_per_sample
    eval_s = (epochs + _EVAL_PASSES) * data.val_samples * eval_per_sample
    return float(f"{train_s + eval_s:.3g}")  # 3 significant digits: a tiny job's estimate is not 0.0


def _basis(seconds: float | None, from_dataset: bool) -> str:
    """Says what the estimate rests on (or why there is none)."""
    if seconds is not None:
        return (f"one training step of {TIMED_SAMPLES} samples timed on this machine's CPU, times the "
                "samples of every epoch and evaluation pass; a GPU worker is faster")
    return "no estimate: it needs the dataset's size" if not from_dataset else "not asked for"
