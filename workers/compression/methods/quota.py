"""WeightMom's layer quotas: how many weights each layer gives up at one pruning event (specs/weightmom.md).

Torch-free integer bookkeeping. Quotas are removal-based (a layer's share of what the global threshold
removes), not keep-based: under masks that only shrink, keep-based allocation drifts to uniform sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["layer_quotas", "relative_sparsity", "water_fill"]


def relative_sparsity(global_removed: Sequence[int], alive: Sequence[int]) -> list[float]:
    """Returns rho_l = (r_l^g / a_l) / (R / sum(a)): how much harder than average the global threshold hits
    layer l (0 for every layer when nothing is removed)."""
    removed_total, alive_total = sum(global_removed), sum(alive)
    if removed_total == 0:
        return [0.0 for _ in alive]
    mean_rate = removed_total / alive_total
    return [(r / a) / mean_rate if a > 0 else 0.0 for r, a in zip(global_removed, alive, strict=True)]


def water_fill(weights: Sequence[float], capacity: Sequence[int], total: int) -> list[int]:
    """Splits `total` in proportion to `weights`, each share at most `capacity`, the excess of a full layer
    going to the others in proportion again; integers by largest remainder (ties to the lower index)."""
    if not 0 <= total <= sum(capacity):
        raise ValueError(f"cannot split {total} over capacities summing to {sum(capacity)}")
    share = [0.0] * len(weights)
    free = [i for i, cap in enumerate(capacity) if cap > 0]
    remaining = float(total)
    while free and remaining > 0:
        scale = [weights[i] for i in free]
        if sum(scale) <= 0:
            # Every layer the weights favour is full: spill the rest over what room is left, evenly.
            scale = [float(capacity[i]) for i in free]
        shares = {i: remaining * w / sum(scale) for i, w in zip(free, scale, strict=True)}
        full = [i for i in free if shares[i] >= capacity[i]]
        if not full:
            for i in free:
                share[i] = shares[i]
            break
        for i in full:
            share[i] = float(capacity[i])
            remaining -= capacity[i]
        free = [i for i in free if i not in full]
    counts = [min(math.floor(s), cap) for s, cap in zip(share, capacity, strict=True)]
    left = total - sum(counts)
    by_remainder = sorted(
        (i for i, cap in enumerate(capacity) if counts[i] < cap), key=lambda i: (counts[i] - share[i], i),
    )
    for i in by_remainder[:left]:
        counts[i] += 1
    return counts


def layer_quotas(
    global_removed: Sequence[int], alive: Sequence[int], *, gamma: float, min_keep: int,
) -> list[int]:
    """Returns r_l ∝ a_l * rho_l^gamma summing to R = sum(global_removed), each in [0, a_l - min_keep].

    gamma = 1 gives back `global_removed` (global thresholding); gamma = 0 the same fraction per layer.
    """
    rho = relative_sparsity(global_removed, alive)
    weights = [a * r**gamma for a, r in zip(alive, rho, strict=True)]  # 0.0 ** 0 == 1: gamma=0 is uniform
    capacity = [max(a - min_keep, 0) for a in alive]
    return water_fill(weights, capacity, sum(global_removed))
