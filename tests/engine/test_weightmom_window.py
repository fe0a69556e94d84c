"""WeightMom per its spec: the pruning window closes at the first LR drop (60% of a cosine run), beta comes
from the interval as used, gamma defaults to 1."""

from __future__ import annotations

import pytest

from workers.compression.config import FinetuneConfig, MagnitudeOptions, WeightMomOptions
from workers.compression.methods.schedule import make_schedule
from workers.compression.methods.unstructured import resolve_beta_gamma, resolve_t_end
from workers.compression.training import learning_rate


@pytest.mark.parametrize("total", [480, 483, 7])
def test_window_ends_at_the_first_lr_drop(total: int) -> None:
    """Every pruning event comes after a step taken at the full LR; the step right after the last one is the
    first at the dropped LR."""
    t_end = resolve_t_end(WeightMomOptions(), FinetuneConfig(schedule="step"), total)
    schedule = make_schedule(total_steps=total, t0=0.0, t_end=t_end, interval=28, final_sparsity=0.9)
    last = schedule.t_end_step
    assert max(schedule.event_steps) == last
    assert all(learning_rate(0.01, "step", step, total) == 0.01 for step in range(last))
    assert learning_rate(0.01, "step", last, total) == pytest.approx(0.001)


def test_cosine_and_explicit_windows() -> None:
    """A cosine run prunes over 60% of its steps (the spec); an explicit t_end wins."""
    assert resolve_t_end(MagnitudeOptions(), FinetuneConfig(schedule="cosine"), 480) == 0.6
    assert resolve_t_end(MagnitudeOptions(t_end=0.3), FinetuneConfig(schedule="step"), 480) == 0.3


def test_beta_from_the_interval_and_gamma_one() -> None:
    """beta = 1 - 1/interval as used (28 steps: 0.964, not 0.99) unless set; gamma 1 as in the spec;
    magnitude is (0, 1)."""
    beta, gamma = resolve_beta_gamma(WeightMomOptions(), 28)
    assert beta == pytest.approx(1 - 1 / 28)
    assert round(beta, 3) == 0.964
    assert gamma == 1.0
    assert resolve_beta_gamma(WeightMomOptions(beta=0.9), 28)[0] == 0.9
    assert resolve_beta_gamma(MagnitudeOptions(), 28) == (0.0, 1.0)
