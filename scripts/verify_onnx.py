"""Runs a downloaded model.onnx in onnxruntime on a validation split and checks the report's accuracy.

How to feed the model comes from the model itself (its `secateur.preprocessing` metadata: image size,
resize + center crop, interpolation, scale, mean/std), so this is exactly what a user does with the
artifact: read its metadata, prepare NCHW float32 batches that way, take the argmax.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from workers.compression.config import DataOptions
from workers.compression.datasets import load_dataset
from workers.compression.onnx_metadata import read_metadata
from workers.compression.preprocessing import Preprocessing


def preprocessing_of(model: Path, report: dict[str, Any] | None) -> dict[str, Any]:
    """Returns the model's preprocessing: its ONNX metadata, else the report's record of it."""
    recorded, _ = read_metadata(onnx.load(str(model), load_external_data=False))
    if recorded is None and report is not None:
        recorded = report["inputs"].get("preprocessing") or report["inputs"]["normalization"]
    if recorded is None:
        raise SystemExit(f"{model} carries no secateur.preprocessing metadata; pass --report")
    return recorded


def onnx_accuracy(model: Path, dataset: Path, recorded: dict[str, Any], seed: int = 0) -> float:
    """Returns top-1 accuracy of the ONNX model on the validation split, fed as `recorded` says (`seed`: the
    job's, which picked the validation images of a dataset that has no validation split)."""
    options = DataOptions(mean=recorded["mean"], std=recorded["std"], scale=recorded["scale"], augment=False)
    fit = Preprocessing(recorded.get("image_size"), recorded.get("crop_pct", 1.0),
                        recorded.get("interpolation", "bilinear"), tuple(recorded["mean"]),
                        tuple(recorded["std"]), recorded.get("channels"), "the model's metadata")
    data = load_dataset(dataset, options, preprocessing=fit, seed=seed)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    for x, y in data.batches("val", 256, shuffle=False):
        logits = session.run(None, {name: x.numpy()})[0]
        correct += int((np.argmax(logits, axis=1) == y.numpy()).sum())
    return correct / data.val_samples


def main() -> int:
    """Prints the measured accuracy (beside the report's, when given) and exits 1 when they differ."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--report", type=Path, help="report.json to compare with (optional)")
    args = parser.parse_args()
    report = json.loads(args.report.read_text()) if args.report else None
    seed = report["inputs"].get("split", {}).get("seed", 0) if report is not None else 0
    measured = onnx_accuracy(args.model, args.dataset, preprocessing_of(args.model, report), seed)
    if report is None:
        print(f"onnxruntime accuracy of {args.model}: {measured:.4f}")
        return 0
    reported = report["pruned"]["ort_accuracy"]
    print(f"onnxruntime accuracy of {args.model}: {measured:.4f} (report: {reported:.4f}; "
          f"baseline {report['baseline']['accuracy']:.4f})")
    return 0 if abs(measured - reported) < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
