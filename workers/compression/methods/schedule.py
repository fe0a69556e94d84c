"""The gradual pruning schedule of Zhu & Gupta (2017): a cubic sparsity ramp sampled at pruning events.

Torch-free and pure, so the math is pinned by unit tests. Steps count optimizer steps already taken:
step 0 is the dense model before training, step `total_steps` is the end of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.compression.errors import InvalidConfig

__all__ = ["MIN_EVENTS", "Schedule", "cubic_sparsity", "make_schedule"]

# A run too short for the requested interval still gets this many events: with the cubic ramp, two or
# three big jumps would cut a large share of the weights at once, which is what gradual pruning avoids.
MIN_EVENTS = 10


def cubic_sparsity(step: int, *, t0: int, t_end: int, final: float) -> float:
    """Returns s_t = s_f * (1 - (1 - p)^3) with p = (t - t0) / (t_end - t0) clamped to [0, 1]."""
    p = min(max((step - t0) / (t_end - t0), 0.0), 1.0) if t_end > t0 else 1.0
    return final * (1.0 - (1.0 - p) ** 3)


@dataclass(frozen=True)
class Schedule:
    """When pruning happens in a run of `total_steps` optimizer steps, and how sparse each event leaves it."""

    total_steps: int
    t0_step: int
    t_end_step: int
    interval: int  # as used (may be shorter than requested, see make_schedule)
    interval_requested: int
    final_sparsity: float

    @property
    def event_steps(self) -> tuple[int, ...]:
        """Returns the steps after which pruning happens: every `interval` after t0, the last one at t_end."""
        grid = range(self.t0_step + self.interval, self.t_end_step, self.interval)
        return (*grid, self.t_end_step)

    def is_event(self, step: int) -> bool:
        """Tells whether pruning happens right after optimizer step `step`."""
        return step == self.t_end_step or (
            self.t0_step < step < self.t_end_step and (step - self.t0_step) % self.interval == 0
        )

    def sparsity_at(self, step: int) -> float:
        """Returns the target sparsity of the prunable weights after step `step` (s_f from t_end on)."""
        return cubic_sparsity(step, t0=self.t0_step, t_end=self.t_end_step, final=self.final_sparsity)


def make_schedule(
    *, total_steps: int, t0: float, t_end: float, interval: int, final_sparsity: float,
    min_events: int = MIN_EVENTS,
) -> Schedule:
    """Turns t0/t_end fractions of the run into steps, shrinking `interval` when the ramp is too short
    for `min_events` events (the finetune tail after t_end keeps the masks frozen). A run of zero steps
    gets one event at step 0: one-shot pruning before (no) training."""
    if t0 > t_end:
        raise InvalidConfig(f"options.t0 ({t0}) must not be after options.t_end ({t_end})")
    if total_steps == 0:
        return Schedule(
            total_steps=0, t0_step=0, t_end_step=0, interval=interval, interval_requested=interval,
            final_sparsity=final_sparsity,
        )
    t_end_step = min(max(round(t_end * total_steps), 1), total_steps)
    # t0 == t_end means one-shot pruning: a ramp of one step whose only event reaches s_f.
    t0_step = min(round(t0 * total_steps), t_end_step - 1)
    span = t_end_step - t0_step
    used = interval
    if math.ceil(span / interval) < min_events:
        used = max(1, span // min_events)
    return Schedule(
        total_steps=total_steps, t0_step=t0_step, t_end_step=t_end_step, interval=used,
        interval_requested=interval, final_sparsity=final_sparsity,
    )
