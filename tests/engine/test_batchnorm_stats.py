"""Adaptive BN after filter removal: running statistics re-estimated on training images, nothing else."""

from __future__ import annotations

import torch
from torch import nn

from workers.compression.batchnorm_stats import recalibrate_batchnorms


def _batches(x: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Splits x into (x, dummy label) batches of `size`."""
    return [(chunk, torch.zeros(chunk.shape[0], dtype=torch.long)) for chunk in x.split(size)]


def test_statistics_become_the_average_over_the_images_with_dropout_off() -> None:
    """The running mean and variance become the batch statistics' average (dropout in front of the norm
    does nothing meanwhile); momentum, training mode and the weights are left as they were."""
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 3 + 5
    model = nn.Sequential(nn.Dropout(0.9), nn.BatchNorm1d(3, momentum=0.3))
    model.train()
    weight = model[1].weight.detach().clone()
    used = recalibrate_batchnorms(model, _batches(x, 16))
    assert used == 64
    norm = model[1]
    torch.testing.assert_close(norm.running_mean, x.mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([b.var(0) for b in x.split(16)]).mean(0))
    assert norm.momentum == 0.3
    assert model.training
    assert norm.training
    torch.testing.assert_close(norm.weight.detach(), weight)


def test_stops_after_the_image_budget_and_leaves_a_model_without_norms_alone() -> None:
    """At most `images` are used (whole batches); a model without BatchNorm is not run at all."""
    x = torch.randn(100, 2)
    model = nn.Sequential(nn.BatchNorm1d(2)).eval()
    assert recalibrate_batchnorms(model, _batches(x, 10), images=25) == 30
    torch.testing.assert_close(model[0].running_mean, x[:30].mean(0))
    assert not model.training
    assert recalibrate_batchnorms(nn.Linear(2, 2), _batches(x, 10)) == 0
