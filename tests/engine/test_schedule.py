"""The cubic gradual-pruning schedule: values at known points and where the events fall."""

from __future__ import annotations

import pytest

from workers.compression.errors import InvalidConfig
from workers.compression.methods.schedule import MIN_EVENTS, cubic_sparsity, make_schedule


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),
        (25, 0.9 * (1 - 0.75**3)),  # 0.5203125
        (50, 0.7875),  # 0.9 * (1 - 0.125)
        (100, 0.9),
        (150, 0.9),  # frozen after t_end
    ],
)
def test_cubic_values_at_known_points(step: int, expected: float) -> None:
    """s_t = s_f (1 - (1 - p)^3) with t0=0, t_end=100, s_f=0.9."""
    assert cubic_sparsity(step, t0=0, t_end=100, final=0.9) == pytest.approx(expected, abs=1e-12)


def test_cubic_is_zero_before_t0() -> None:
    """Nothing is pruned before the ramp starts."""
    assert cubic_sparsity(10, t0=20, t_end=60, final=0.5) == 0.0
    assert cubic_sparsity(40, t0=20, t_end=60, final=0.5) == pytest.approx(0.5 * (1 - 0.5**3))


def test_events_every_interval_ending_at_t_end() -> None:
    """1000 steps, t_end=0.6, interval 50: twelve events 50..600, the last reaching s_f."""
    s = make_schedule(total_steps=1000, t0=0.0, t_end=0.6, interval=50, final_sparsity=0.9)
    assert (s.t0_step, s.t_end_step, s.interval) == (0, 600, 50)
    assert s.event_steps == tuple(range(50, 601, 50))
    assert s.sparsity_at(600) == 0.9
    assert [t for t in range(1001) if s.is_event(t)] == list(s.event_steps)


def test_last_gap_is_shorter_when_span_is_not_a_multiple() -> None:
    """t0=100, t_end=550, interval 40: events 140, 180, ..., 540 and then 550."""
    s = make_schedule(total_steps=1000, t0=0.1, t_end=0.55, interval=40, final_sparsity=0.5)
    assert s.event_steps == (*range(140, 541, 40), 550)
    assert [t for t in range(1001) if s.is_event(t)] == list(s.event_steps)


def test_short_run_shrinks_the_interval() -> None:
    """400 steps (10 epochs of CIFAR subset at batch 128), t_end=0.6: 240 steps give MIN_EVENTS events."""
    s = make_schedule(total_steps=400, t0=0.0, t_end=0.6, interval=100, final_sparsity=0.9)
    assert (s.interval, s.interval_requested) == (240 // MIN_EVENTS, 100)
    assert len(s.event_steps) == MIN_EVENTS
    assert s.event_steps[-1] == 240


def test_tiny_run_prunes_every_step() -> None:
    """A ramp shorter than MIN_EVENTS steps prunes after every step."""
    s = make_schedule(total_steps=6, t0=0.0, t_end=0.5, interval=100, final_sparsity=0.5)
    assert s.event_steps == (1, 2, 3)


def test_t0_equal_t_end_is_one_shot() -> None:
    """A ramp of zero length prunes once, straight to the target."""
    s = make_schedule(total_steps=100, t0=0.3, t_end=0.3, interval=10, final_sparsity=0.8)
    assert s.event_steps == (30,)
    assert s.sparsity_at(30) == 0.8


def test_zero_steps_is_one_shot_before_training() -> None:
    """With no training at all, the single event is at step 0 and reaches the target."""
    s = make_schedule(total_steps=0, t0=0.0, t_end=0.6, interval=10, final_sparsity=0.7)
    assert s.event_steps == (0,)
    assert s.sparsity_at(0) == 0.7


def test_t0_after_t_end_is_refused() -> None:
    """A ramp that ends before it starts is a config error with the stable code."""
    with pytest.raises(InvalidConfig) as info:
        make_schedule(total_steps=100, t0=0.7, t_end=0.6, interval=10, final_sparsity=0.5)
    assert info.value.code == "invalid_config"
