"""NaN and infinity in stored weights, found from the raw bytes without decoding them (numpy only).

A float is NaN or infinite exactly when its exponent bits are all ones, for float32, float16, bfloat16
and float64 alike, so one mask per type finds them in any little-endian buffer (an ONNX `raw_data`, a
safetensors data block), bfloat16 included, which numpy cannot decode. Weights like that train to NaN and
used to fail late as a misleading `export_mismatch`; the loaders refuse them as `invalid_model`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXPONENT_MASKS", "nonfinite_count"]

# safetensors dtype name -> (unsigned view, all-ones exponent mask)
EXPONENT_MASKS: dict[str, tuple[type[np.unsignedinteger], int]] = {
    "F32": (np.uint32, 0x7F80_0000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
    "F64": (np.uint64, 0x7FF0_0000_0000_0000),
}
_CHUNK = 1 << 24  # elements looked at per step: bounded temporaries whatever the tensor's size


def nonfinite_count(raw: bytes | np.ndarray, dtype: str) -> int:
    """Returns how many NaN/inf values a little-endian buffer of `dtype` ("F32", "F16", "BF16", "F64") holds
    (a ragged tail shorter than one value is ignored: the format's own reader refuses such a file)."""
    view, mask = EXPONENT_MASKS[dtype]
    kind = np.dtype(view).newbyteorder("<")
    size = raw.nbytes if isinstance(raw, np.ndarray) else len(raw)
    bits = np.frombuffer(raw, dtype=kind, count=size // kind.itemsize)
    found = 0
    for start in range(0, bits.size, _CHUNK):
        found += int(np.count_nonzero((bits[start:start + _CHUNK] & mask) == mask))
    return found
