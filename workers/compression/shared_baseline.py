"""Measuring a dense model once for several jobs that share it (a sweep's points), and reusing it.

The dense baseline (ONNX verification over the validation split, parameter and MAC counts, ONNX bytes raw
and zstd) depends only on the model, the data and how the data is fed, never on the target. So a job
that shares those with an earlier one takes the earlier measurement from the caller's `BaselineCache`
instead of measuring again; the key below is what the measurement depends on, so a cache entry made
from other inputs is never used. Latency is not shared: it is measured in alternation with the pruned
model in every job (see measure.latency_ms), because a latency taken on another worker at another time
is not comparable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from workers.compression.config import JobConfig
from workers.compression.export import Verification
from workers.compression.measure import ParamCounts

__all__ = ["BaselineCache", "baseline_key", "decode", "encode", "measure_once"]

_NUMBERS = ("macs", "onnx_bytes", "onnx_zstd_bytes")  # the measurement's plain integer figures


class BaselineCache(Protocol):
    """Where a dense baseline measurement is shared between jobs (the service: the sweep's row)."""

    def get(self) -> dict[str, Any] | None:
        """Returns the stored measurement record (from `encode`), or None when there is none yet."""

    def put(self, record: dict[str, Any]) -> None:
        """Stores a measurement record unless one is stored already (the first one wins)."""


def baseline_key(inputs: dict[str, Any], config: JobConfig) -> str:
    """Returns what the dense measurement depends on, hashed: both files, how the data is fed, the seed."""
    facts = {"model": inputs["model_sha256"], "dataset": inputs["dataset_sha256"],
             "architecture": config.architecture, "preprocessing": inputs["preprocessing"],
             "data": config.data.model_dump(mode="json"), "seed": config.seed}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def encode(key: str, measured: dict[str, Any]) -> dict[str, Any]:
    """Returns the JSON record of a `_measure_side` result under `key`."""
    return {"key": key, "verification": asdict(measured["verification"]),
            "counts": asdict(measured["counts"]), **{name: measured[name] for name in _NUMBERS}}


def decode(key: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """Returns the measurement a record holds, or None when it was made for another key or is malformed."""
    if record.get("key") != key:
        return None
    try:
        return {"verification": Verification(**record["verification"]),
                "counts": ParamCounts(**record["counts"]), **{name: int(record[name]) for name in _NUMBERS}}
    except (KeyError, TypeError, ValueError):
        return None


def measure_once(
    cache: BaselineCache | None, key: str, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Returns the cached measurement for `key`, or measures it and offers it to the cache."""
    if cache is None:
        return measure()
    record = cache.get()
    reused = decode(key, record) if record is not None else None
    if reused is not None:
        return reused
    measured = measure()
    cache.put(encode(key, measured))
    return measured
