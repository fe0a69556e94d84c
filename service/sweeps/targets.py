"""A sweep's targets: an explicit list, or an evenly spaced range of one kind, checked like a job's."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidRequest

__all__ = ["MAX_POINTS", "TargetRange", "expand"]

MAX_POINTS = 32  # a sweep is one submission; this bounds how much work one request may queue


class TargetRange(BaseModel):
    """`num` targets of one kind from `start` to `stop`, both included (numpy's linspace)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sparsity", "pruning_ratio", "flops_reduction"]
    start: float
    stop: float
    num: int = Field(ge=2, le=MAX_POINTS)

    @model_validator(mode="after")
    def _ordered(self) -> TargetRange:
        """Refuses an empty range (start == stop gives the same target `num` times)."""
        if self.start == self.stop:
            raise ValueError("start and stop are equal: every point would be the same target")
        return self


def expand(targets: list[dict[str, Any]] | None, span: TargetRange | None) -> list[dict[str, Any]]:
    """Returns the sweep's targets in order; exactly one of the list and the range must be given."""
    if (targets is None) == (span is None):
        raise InvalidRequest("give either `targets` (a list) or `range`, not both and not neither",
                             code="invalid_sweep")
    if span is not None:
        step = (span.stop - span.start) / (span.num - 1)
        # Rounded so that 0.1 + 2 * 0.2 reads 0.5 in the API, not 0.5000000000000001.
        return [{span.kind: round(span.start + i * step, 10)} for i in range(span.num)]
    assert targets is not None
    if not 1 <= len(targets) <= MAX_POINTS:
        raise InvalidRequest(f"a sweep has 1 to {MAX_POINTS} targets, not {len(targets)}",
                             code="invalid_sweep")
    seen: set[str] = set()
    for target in targets:
        key = json.dumps(target, sort_keys=True, default=str)  # values may be anything JSON holds
        if key in seen:
            raise InvalidRequest(f"target {target} appears twice", code="invalid_sweep")
        seen.add(key)
    return targets
