"""Runs a downloaded model.onnx in onnxruntime on a validation split and checks the report's accuracy.

The preprocessing (scale, per-channel mean/std) is read from the job's report.json, so this is exactly
what a user does with the artifact: load it, feed normalized NCHW float32 batches, take the argmax.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from workers.compression.config import DataOptions
from workers.compression.datasets import load_dataset


def onnx_accuracy(model: Path, dataset: Path, normalization: dict[str, object]) -> float:
    """Returns top-1 accuracy of the ONNX model on the validation split, normalized as the report says."""
    options = DataOptions(mean=normalization["mean"], std=normalization["std"],  # type: ignore[arg-type]
                          scale=normalization["scale"], augment=False)  # type: ignore[arg-type]
    data = load_dataset(dataset, options)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(data.y_val), 256):
        x = data.normalize(data.x_val[start:start + 256]).numpy()
        logits = session.run(None, {name: x})[0]
        correct += int((np.argmax(logits, axis=1) == data.y_val[start:start + 256].numpy()).sum())
    return correct / len(data.y_val)


def main() -> int:
    """Prints the measured accuracy beside the report's and exits 1 when they differ."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    measured = onnx_accuracy(args.model, args.dataset, report["inputs"]["normalization"])
    reported = report["pruned"]["ort_accuracy"]
    print(f"onnxruntime accuracy of {args.model}: {measured:.4f} (report: {reported:.4f}; "
          f"baseline {report['baseline']['accuracy']:.4f})")
    return 0 if abs(measured - reported) < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
