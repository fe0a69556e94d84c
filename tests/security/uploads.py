"""Tiny, real, valid uploads (torch-free): what a job accepts, as bytes, for tests of the submit path.

The submit path validates uploads in full, so fakes no longer pass: weights must fit their architecture,
an ONNX model must take the dataset's samples. `FEATURES`/`CLASSES` tie the pieces together.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.numpy import save as save_safetensors

__all__ = [
    "CLASSES",
    "CONFIG",
    "FEATURES",
    "image_tar",
    "image_zip",
    "linear_onnx",
    "mlp_safetensors",
    "npz_dataset",
    "png",
]

FEATURES, CLASSES = 4, 2
CONFIG = {"method": "l1", "architecture": "mlp", "target": {"pruning_ratio": 0.5}, "finetune": {"epochs": 1}}


def npz_dataset(features: int = FEATURES, classes: int = CLASSES) -> bytes:
    """An .npz of flat float32 samples: 8 train and 4 val, labels cycling through the classes."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.random((8, features), dtype=np.float32), y_train=np.arange(8) % classes,
             x_val=rng.random((4, features), dtype=np.float32), y_val=np.arange(4) % classes)
    return buf.getvalue()


def linear_onnx(features: int = FEATURES, classes: int = CLASSES) -> onnx.ModelProto:
    """A checker-clean ONNX classifier (batch, features) -> (batch, classes): one MatMul and an Add."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(classes, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def mlp_safetensors(features: int = FEATURES, classes: int = CLASSES) -> bytes:
    """Weights of the zoo's `mlp` (features -> 300 -> 100 -> classes) as safetensors."""
    shapes = {"fc1": (300, features), "fc2": (100, 300), "fc3": (classes, 100)}
    tensors: dict[str, np.ndarray] = {}
    for name, (out, inp) in shapes.items():
        tensors[f"{name}.weight"] = np.full((out, inp), 0.01, np.float32)
        tensors[f"{name}.bias"] = np.zeros(out, np.float32)
    return save_safetensors(tensors, metadata={"architecture": "mlp"})


def png(width: int = 8, height: int = 8, mode: str = "RGB") -> bytes:
    """A small PNG image."""
    buf = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def _folder() -> dict[str, bytes]:
    """An image-folder layout: two classes, two train images and one val image each."""
    return {f"{split}/{cls}/{i}.png": png() for split, n in (("train", 2), ("val", 1))
            for cls in ("cat", "dog") for i in range(n)}


def image_zip(compression: int = zipfile.ZIP_STORED) -> bytes:
    """A valid image-folder .zip dataset (members stored, or compressed with `compression`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in _folder().items():
            zf.writestr(name, data)
    return buf.getvalue()


def image_tar(compression: str = "") -> bytes:
    """A valid image-folder .tar (or .tar.gz with compression="gz") dataset."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in _folder().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue()) if compression == "gz" else buf.getvalue()
