"""A sweep's pure parts: the Pareto front, its derived status, and its targets (list or range)."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import InvalidRequest
from service.sweeps.pareto import front, fronts
from service.sweeps.schemas import sweep_status
from service.sweeps.targets import TargetRange, expand


def point(job_id: str, accuracy: float, flops: int, latency: float, size: int) -> dict[str, Any]:
    """A measured point as the sweep view holds it."""
    return {"job_id": job_id, "accuracy": accuracy, "flops": flops, "latency_ms": {"b1": latency, "b64": 9.0},
            "onnx_bytes": size}


def test_front_keeps_only_points_no_other_beats_on_every_objective() -> None:
    points = [
        point("dense-ish", 0.92, 40, 2.0, 400),
        point("balanced", 0.90, 20, 1.5, 200),
        point("dominated", 0.89, 25, 1.6, 250),  # "balanced" is better on all four
        point("tiny", 0.80, 5, 0.5, 50),
        point("slow-but-small", 0.85, 10, 3.0, 100),  # worse latency than "tiny" but better accuracy
    ]
    assert front(points) == ["dense-ish", "balanced", "tiny", "slow-but-small"]
    by = fronts(points)
    assert by["flops"] == ["dense-ish", "balanced", "tiny", "slow-but-small"]
    assert by["latency_ms"] == ["dense-ish", "balanced", "tiny"]  # slower and less accurate than "balanced"


def test_front_keeps_ties_and_skips_points_without_figures() -> None:
    points = [point("a", 0.9, 10, 1.0, 100), point("b", 0.9, 10, 1.0, 100),
              {"job_id": "failed", "accuracy": None, "flops": None}]
    assert front(points) == ["a", "b"]
    assert front([]) == []


@pytest.mark.parametrize(("statuses", "cancelled", "expected"), [
    (["succeeded", "running"], False, "running"),
    (["queued"], True, "running"),  # a cancelled sweep runs until its points have stopped
    (["succeeded", "succeeded"], False, "succeeded"),
    (["succeeded", "succeeded"], True, "succeeded"),  # cancelled too late: everything finished
    (["succeeded", "failed", "cancelled"], False, "failed"),
    (["succeeded", "failed", "cancelled"], True, "cancelled"),
    (["succeeded", "cancelled"], False, "cancelled"),
])
def test_sweep_status_follows_its_points(statuses: list[str], cancelled: bool, expected: str) -> None:
    assert sweep_status(statuses, cancelled) == expected


def test_targets_come_from_a_list_or_an_inclusive_range() -> None:
    assert expand(None, TargetRange(kind="pruning_ratio", start=0.1, stop=0.9, num=5)) == [
        {"pruning_ratio": 0.1}, {"pruning_ratio": 0.3}, {"pruning_ratio": 0.5}, {"pruning_ratio": 0.7},
        {"pruning_ratio": 0.9}]
    listed = [{"sparsity": 0.5}, {"sparsity": 0.9}]
    assert expand(listed, None) == listed


@pytest.mark.parametrize("targets", [None, [], [{"sparsity": 0.5}, {"sparsity": 0.5}],
                                     [{"sparsity": [0.5]}, {"sparsity": [0.5]}],  # values of any JSON type
                                     [{"sparsity": 0.1 + i / 100} for i in range(33)]])
def test_bad_target_lists_are_refused(targets: list[dict[str, Any]] | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        expand(targets, None)
    assert caught.value.code == "invalid_sweep"


def test_a_list_and_a_range_together_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        expand([{"sparsity": 0.5}], TargetRange(kind="sparsity", start=0.1, stop=0.5, num=2))
    with pytest.raises(ValueError, match="equal"):
        TargetRange(kind="sparsity", start=0.5, stop=0.5, num=3)
