"""WeightMom's layer quotas: relative sparsity, water-filling and largest-remainder rounding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.compression.methods.quota import layer_quotas, relative_sparsity, water_fill


def test_relative_sparsity_hand_case() -> None:
    """R=60 of A=160 (mean rate 0.375): layer rates 0.3, 0.4, 1.0 give rho 0.8, 16/15, 8/3."""
    rho = relative_sparsity([30, 20, 10], [100, 50, 10])
    assert rho == pytest.approx([0.8, 16 / 15, 8 / 3])


def test_gamma_one_clamps_at_min_keep_and_redistributes_hand_case() -> None:
    """The global threshold would empty layer 3 (10 of 10); it keeps 1, and the 1 left over goes to the
    others in proportion 30:20 (shares 30.6 and 20.4), largest remainder to layer 1: [31, 20, 9]."""
    assert layer_quotas([30, 20, 10], [100, 50, 10], gamma=1.0, min_keep=1) == [31, 20, 9]


def test_gamma_zero_hand_case() -> None:
    """Weights = alive counts: shares 37.5, 18.75, 3.75 of 60; floors 37+18+3 = 58, the 2 left go to the
    two largest remainders (0.75, 0.75): [37, 19, 4]."""
    assert layer_quotas([30, 20, 10], [100, 50, 10], gamma=0.0, min_keep=1) == [37, 19, 4]


def test_gamma_half_hand_case() -> None:
    """a*sqrt(rho) for rho 0.8, 16/15, 8/3 (R=60) gives shares 34.09, 19.68, 6.22: floors 34+19+6 = 59,
    the one left goes to the largest remainder (layer 2): [34, 20, 6]."""
    rho = [0.8, 16 / 15, 8 / 3]
    weights = [a * r**0.5 for a, r in zip([100, 50, 10], rho, strict=True)]
    shares = [60 * w / sum(weights) for w in weights]
    assert shares == pytest.approx([34.0924, 19.6832, 6.2244], abs=1e-4)
    assert layer_quotas([30, 20, 10], [100, 50, 10], gamma=0.5, min_keep=1) == [34, 20, 6]


def test_nothing_to_remove_gives_zero_quotas() -> None:
    """R = 0 gives all-zero quotas, whatever gamma."""
    assert layer_quotas([0, 0], [10, 20], gamma=0.0, min_keep=1) == [0, 0]


def test_water_fill_spills_when_favoured_layers_are_full() -> None:
    """Only layer 0 has weight but room for 2: the other 4 spread over the remaining room (5 and 5)."""
    assert water_fill([1.0, 0.0, 0.0], [2, 5, 5], 6) == [2, 2, 2]


def test_water_fill_refuses_more_than_capacity() -> None:
    """Asking for more than fits is a bug in the caller, not something to round away."""
    with pytest.raises(ValueError, match="cannot split"):
        water_fill([1.0, 1.0], [3, 3], 7)


@st.composite
def _layers(draw: st.DrawFn) -> tuple[list[int], list[int], float]:
    """Draws alive counts, a global removal per layer (at most alive) and gamma."""
    alive = draw(st.lists(st.integers(1, 300), min_size=1, max_size=8))
    removed = [draw(st.integers(0, a)) for a in alive]
    gamma = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    return alive, removed, gamma


@settings(max_examples=200, deadline=None)
@given(_layers())
def test_quotas_sum_to_r_and_respect_min_keep(case: tuple[list[int], list[int], float]) -> None:
    """Quotas always sum exactly to R (when R fits) and never leave a layer below min_keep."""
    alive, removed, gamma = case
    min_keep = 1
    total = sum(removed)
    if total > sum(a - min_keep for a in alive):
        return  # the caller caps R at what fits; covered by test_water_fill_refuses_more_than_capacity
    quotas = layer_quotas(removed, alive, gamma=gamma, min_keep=min_keep)
    assert sum(quotas) == total
    assert all(0 <= q <= a - min_keep for q, a in zip(quotas, alive, strict=True))


@settings(max_examples=200, deadline=None)
@given(_layers())
def test_gamma_one_returns_the_global_removal(case: tuple[list[int], list[int], float]) -> None:
    """gamma = 1 reproduces global thresholding exactly when no layer hits its min_keep floor."""
    alive, removed, _ = case
    removed = [min(r, a - 1) for r, a in zip(removed, alive, strict=True)]
    assert layer_quotas(removed, alive, gamma=1.0, min_keep=1) == removed
