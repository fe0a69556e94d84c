"""`python -m workers.compression.validate`: checks an uploaded model and dataset inside a locked-down child.

The service (service/jobs/sandbox.py) runs this in a fresh process whose environment holds no credentials.
Before it opens either file it caps its own resources: address space, CPU seconds, open files, and a file
size of 0 (it has no reason to write anything). Then it parses both inputs with the engine's own
validators — the dataset first (it fixes the sample shape and class count; an image dataset's pixels
are counted from its headers against the pixel budget), then the model against it, its cost estimated
at that shape and held to the limits it is given (`--max-params-bytes`, `--max-activation-bytes`,
`--max-flops`: model_too_costly) — and prints one JSON line per stage and a last verdict line:

    {"stage": "dataset"}  {"stage": "model"}  {"ok": true, "model_format": ..., ...}
    or {"ok": false, "code": "invalid_model", "message": ...}

A child that dies (a limit's signal, a crashing parser) leaves its last stage line naming the culprit.
Torch is imported only to compare safetensors weights with a zoo architecture, and only where it is
installed: the API image has numpy, onnx, safetensors and pillow but no torch, so there this child checks
the weights' header and the worker checks their fit to the architecture when it loads them.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from workers.compression.architectures import check_model_format, parse_architecture
from workers.compression.child_limits import (
    MAX_OPEN_FILES,
    RESOURCES_EXCEEDED,
    VALIDATOR_BROKEN,
    limit_resources,
)
from workers.compression.cost import CostLimits, ModelCost, check_cost
from workers.compression.errors import InvalidDataset, UserError
from workers.compression.pixel_budget import check_pixels

__all__ = ["MAX_OPEN_FILES", "RESOURCES_EXCEEDED", "VALIDATOR_BROKEN", "inspect_inputs", "limit_resources",
           "main"]

_MAX_MESSAGE = 2000  # characters of an error message passed back (input-derived names are truncated)
_STAGE_CODES = {"dataset": "invalid_dataset", "model": "invalid_model"}


def inspect_inputs(model: Path, dataset: Path, architecture: str | None,
                   on_stage: Callable[[str], None] = lambda _: None,
                   limits: CostLimits | None = None) -> dict[str, Any]:
    """Validates the dataset, then the model against it (its cost estimate held against `limits`);
    returns their formats, sample shape, classes and the estimate."""
    from workers.compression.sniff import sniff_dataset_file, sniff_model_file

    on_stage("dataset")
    dataset_format = sniff_dataset_file(dataset)
    input_shape, num_classes = _dataset_facts(dataset, dataset_format)
    on_stage("model")
    model_format = sniff_model_file(model)
    cost: ModelCost | None = None
    if model_format == "onnx":
        from workers.compression import onnx_import
        from workers.compression.onnx_cost import estimate_onnx_cost

        proto = onnx_import.read_onnx(model)
        fed = fed_shape(onnx_import.signature(proto)[0], input_shape)
        classes = onnx_import.check_fits(proto, fed, num_classes)
        cost = estimate_onnx_cost(proto, fed)
    else:
        classes, cost = _weights_classes(model, model_format, architecture, input_shape, num_classes)
    if cost is not None:
        check_cost(cost, limits or CostLimits())
    return {"ok": True, "model_format": model_format, "dataset_format": dataset_format,
            "input_shape": list(input_shape), "num_classes": num_classes, "model_classes": classes,
            "cost": None if cost is None else asdict(cost)}


def fed_shape(declared: tuple[int | None, ...], data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Returns the sample shape the engine will feed an ONNX model: images are resized to a fixed square
    input and grayscale repeated to its channels (as `preprocessing.for_onnx` decides, without torch)."""
    fixed = len(declared) == 3 and declared[1] is not None and declared[1] == declared[2]
    if not fixed or len(data_shape) != 3:
        return data_shape
    channels = declared[0] if declared[0] is not None and data_shape[0] in (1, declared[0]) else data_shape[0]
    return channels, int(declared[1] or 0), int(declared[2] or 0)


def _dataset_facts(path: Path, kind: str) -> tuple[tuple[int, ...], int]:
    """Returns (sample shape, class count) of a dataset, checked in full but without loading its images."""
    if kind == "npz":
        from workers.compression import npz

        members, (y_train, y_val) = npz.load_npz(path, ("y_train", "y_val"))
        x_train, x_val = members["x_train"], members["x_val"]
        shape = npz.check_samples("x_train", x_train.shape, x_train.dtype)
        val_shape = npz.check_samples("x_val", x_val.shape, x_val.dtype)
        if val_shape != shape:
            raise InvalidDataset(f"x_train samples have shape {shape} but x_val samples {val_shape}; both "
                                 "splits must share one sample shape")
        y_train = npz.check_labels(y_train, "y_train", x_train.shape[0])
        y_val = npz.check_labels(y_val, "y_val", x_val.shape[0])
        return shape, npz.num_classes(y_train, y_val)
    from workers.compression.image_index import index_dataset

    index = index_dataset(path, kind, seed=0, cache=False)  # headers only; this child may not write
    check_pixels(index.sizes, path.stat().st_size)
    channels = 1 if index.gray else 3
    if index.one_size is not None:
        width, height = index.one_size
        return (channels, height, width), len(index.classes)
    # Images of several sizes are resized to the model's size; short of it, to their commonest short side.
    side = min(index.sizes.most_common(1)[0][0])
    return (channels, side, side), len(index.classes)


def _weights_classes(model: Path, model_format: str, architecture: str | None, input_shape: tuple[int, ...],
                     num_classes: int) -> tuple[int | None, ModelCost | None]:
    """Checks weights against the architecture: the header or checkpoint archive first (no torch), every
    float finite, then, for zoo networks, keys and shapes, and the cost on the meta device. Library
    architectures are fitted by the worker, which knows the image size the model is built for."""
    check_model_format(model_format, architecture)
    if model_format == "hf":
        from workers.compression.hf_archive import scan

        scan(model)  # refuses code, auto_map, pickled weights and malformed JSON or headers
        return None, None
    from workers.compression.safetensors_file import check_finite, read_header

    read_header(model)  # refuses a malformed or oversized header before torch is even imported
    check_finite(model)
    assert architecture is not None  # check_model_format refused weights without one
    if parse_architecture(architecture).library != "zoo" or find_spec("torch") is None:
        return None, None  # the worker checks the fit when it loads the weights
    from workers.compression.model_io import check_safetensors
    from workers.compression.module_cost import estimate_zoo_cost

    classes = check_safetensors(model, architecture=architecture, input_shape=input_shape,
                                num_classes=num_classes)
    return classes, estimate_zoo_cost(architecture, input_shape, classes)


def _emit(payload: dict[str, Any]) -> None:
    """Writes one JSON line to stdout, at once."""
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the child's arguments (paths and limits; nothing here comes from the uploader)."""
    parser = argparse.ArgumentParser(prog="python -m workers.compression.validate",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--architecture", default=None)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--cpu-s", type=int, required=True)
    defaults = CostLimits()
    parser.add_argument("--max-params-bytes", type=int, default=defaults.params_bytes)
    parser.add_argument("--max-activation-bytes", type=int, default=defaults.activation_bytes)
    parser.add_argument("--max-flops", type=int, default=defaults.flops_per_sample)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Limits itself, validates both inputs and prints the verdict; exits 0 whenever it could answer."""
    args = _parse(argv)
    limit_resources(memory_bytes=args.memory_bytes, cpu_s=args.cpu_s)
    stages = ["dataset"]

    def announce(stage: str) -> None:
        stages.append(stage)
        _emit({"stage": stage})

    verdict: dict[str, Any]
    try:
        limits = CostLimits(args.max_params_bytes, args.max_activation_bytes, args.max_flops)
        verdict = inspect_inputs(args.model, args.dataset, args.architecture, announce, limits)
    except UserError as exc:
        verdict = {"ok": False, "code": exc.code, "message": exc.message[:_MAX_MESSAGE]}
    except Exception as exc:
        verdict = _unexpected(exc, stages[-1])
    _emit(verdict)
    return 0


def _unexpected(exc: Exception, stage: str) -> dict[str, Any]:
    """The verdict for an untyped failure: the memory cap, a broken install, or else the input's fault."""
    if _out_of_memory(exc):
        return {"ok": False, "code": RESOURCES_EXCEEDED,
                "message": "checking the upload needed more memory than the validation limit allows"}
    if isinstance(exc, ImportError):  # not caused by any input: the deployment is broken
        return {"ok": False, "code": VALIDATOR_BROKEN, "message": f"the validator cannot import: {exc}"}
    # A parser failing in a way nobody typed is still a refusal of that input.
    return {"ok": False, "code": _STAGE_CODES[stage],
            "message": f"the {stage} file could not be parsed ({type(exc).__name__})"}


def _out_of_memory(exc: BaseException) -> bool:
    """Tells whether an error comes from the address-space cap (in Python, or mapping a shared library)."""
    if isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM:
        return True
    text = str(exc)
    return isinstance(exc, (ImportError, OSError)) and (
        "failed to map segment" in text or "Cannot allocate memory" in text)


if __name__ == "__main__":
    sys.exit(main())
