"""The linear-time selection behind every unstructured pruning event picks what a stable sort would."""

from __future__ import annotations

import pytest
import torch

from workers.compression.methods.masks import smallest


@pytest.mark.parametrize("count", [0, 1, 7, 50, 99, 100, 120])
def test_smallest_matches_a_stable_sort_with_ties(count: int) -> None:
    """Ties (many equal values, zeros, infinities) go to the lower index, as a stable argsort orders them."""
    values = torch.tensor([3.0, 1.0, 1.0, 0.0, float("inf"), 2.0, 1.0, 0.0, 5.0, 1.0] * 10)
    expected = torch.zeros_like(values, dtype=torch.bool)
    expected[torch.argsort(values, stable=True)[:count]] = True
    chosen = smallest(values, count)
    assert chosen.dtype == torch.bool
    assert torch.equal(chosen, expected)


def test_smallest_on_random_values_matches_a_sort() -> None:
    """On distinct values the mask holds exactly the `count` smallest."""
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    chosen = smallest(values, 1234)
    assert int(chosen.sum()) == 1234
    assert values[chosen].max() < values[~chosen].min()
