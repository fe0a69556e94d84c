"""The exported ONNX says how to feed it: preprocessing and class names in the model's `metadata_props`.

Readers (onnxruntime's `get_modelmeta().custom_metadata_map`, Netron, `scripts/verify_onnx.py`) see
`secateur.preprocessing` (JSON: image size, resize/crop, interpolation, scale, mean/std, layout) and
`secateur.classes` (a JSON list) when the dataset named its classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

__all__ = ["CLASSES_KEY", "PREPROCESSING_KEY", "read_metadata", "write_metadata"]

PREPROCESSING_KEY = "secateur.preprocessing"
CLASSES_KEY = "secateur.classes"


def write_metadata(path: Path, preprocessing: dict[str, Any], classes: list[str] | None) -> None:
    """Adds the preprocessing (and class names) to an exported model, in place, replacing older values."""
    model = onnx.load(str(path))
    values = {PREPROCESSING_KEY: json.dumps(preprocessing, sort_keys=True)}
    if classes is not None:
        values[CLASSES_KEY] = json.dumps(classes)
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def read_metadata(model: onnx.ModelProto) -> tuple[dict[str, Any] | None, list[str] | None]:
    """Returns (preprocessing, class names) written by `write_metadata`, None where absent or unreadable."""
    props = {p.key: p.value for p in model.metadata_props}
    return _loads(props.get(PREPROCESSING_KEY), dict), _loads(props.get(CLASSES_KEY), list)


def _loads(text: str | None, kind: type) -> Any:
    """Parses one JSON value of the expected kind, or returns None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, kind) else None
