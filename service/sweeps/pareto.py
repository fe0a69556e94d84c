"""The Pareto front of a sweep: the points no other point beats on accuracy and on every cost at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COSTS", "costs_of", "front", "fronts"]

# What a point costs, each lower-is-better; latency is batch 1 (one request: what serving waits for).
COSTS: dict[str, tuple[str, ...]] = {"flops": ("flops",), "latency_ms": ("latency_ms", "b1"),
                                     "onnx_bytes": ("onnx_bytes",)}


def _number(point: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    """Returns the number at `path` in a point (None when any step is missing or not a number)."""
    value: Any = point
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def costs_of(point: Mapping[str, Any], names: Sequence[str]) -> tuple[float, ...] | None:
    """Returns (accuracy, *costs) of a measured point, or None when it lacks any of them."""
    values = [_number(point, ("accuracy",)), *(_number(point, COSTS[name]) for name in names)]
    return None if any(v is None for v in values) else tuple(v for v in values if v is not None)


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Tells whether `a` is at least as good as `b` everywhere and better somewhere (accuracy first, up)."""
    no_worse = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:], strict=True))
    return no_worse and a != b


def front(points: Sequence[Mapping[str, Any]], names: Sequence[str] = tuple(COSTS)) -> list[str]:
    """Returns the job ids of the measured points that no other point dominates, in the points' order.

    Two points with identical figures are both kept: neither is better, and the user may want either.
    """
    measured = [(str(p["job_id"]), c) for p in points if (c := costs_of(p, names)) is not None]
    return [job_id for job_id, mine in measured
            if not any(_dominates(other, mine) for _, other in measured)]


def fronts(points: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Returns the two-objective front of accuracy against each cost alone (what a 2-D plot can draw)."""
    return {name: front(points, (name,)) for name in COSTS}
