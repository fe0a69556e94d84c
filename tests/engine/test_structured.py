"""Filter pruning (groups, L1 selection, rounding, FLOPs search, physical removal) and `l1` end to end.

Removal is checked where it must be exact: with the planned filters and their BN scale/shift zeroed first,
the pruned model must compute the same logits as the dense one — on the zoo ResNet (option-A shortcuts),
a zoo VGG, and ONNX-imported graphs (default and `coupled: true`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine.conftest import IMAGE_SHAPE, SliverNet, TinyResNet
from tests.engine.model_files import export_onnx
from workers.compression import zoo
from workers.compression.config import FinetuneConfig, JobConfig, Target
from workers.compression.datasets import DatasetBundle
from workers.compression.errors import InvalidConfig, UnsupportedOp
from workers.compression.methods import groups, registry
from workers.compression.methods.base import PruneContext
from workers.compression.methods.structured import (
    Group,
    GroupPlan,
    L1Method,
    Member,
    Structure,
    find_groups,
    importance,
    kept_count,
    macs,
    remove,
    search_ratio,
    select,
)
from workers.compression.methods.tpp import zero_out
from workers.compression.onnx_import import read_onnx, to_torch
from workers.compression.training import Trainer

RESNET_SHAPE = (3, 8, 8)  # the zoo ResNet at 8x8 inputs: the same graph as CIFAR's 32x32, 16x cheaper


class ConvShortcutNet(nn.Module):
    """A residual CNN with a 1x1-conv shortcut stage: its stage-2 add couples three convs (not the stem)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.a1, self.a2 = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)  # identity block
        self.b1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.b2, self.short = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(4, 8, 1, stride=2)  # projection block
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)  # identity block
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, 8, 8) to logits (B, 4)."""
        x = self.stem(x)
        x = torch.relu(x + self.a2(torch.relu(self.a1(x))))  # (B, 4, 8, 8)
        x = torch.relu(self.short(x) + self.b2(torch.relu(self.b1(x))))  # (B, 8, 4, 4)
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


def imported(model: nn.Module, tmp_path: Path, shape: tuple[int, ...] = IMAGE_SHAPE) -> nn.Module:
    """Exports `model` to ONNX and imports it back as the engine does (onnx2torch: arbitrary module names)."""
    path = export_onnx(model.eval(), tmp_path / "model.onnx", shape)
    return to_torch(read_onnx(path), shape)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm random statistics and affine params, so zeroing must beat the running stats."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.load_state_dict({
                "running_mean": torch.randn(n, generator=g), "running_var": torch.rand(n, generator=g) + 0.5,
                "weight": torch.randn(n, generator=g), "bias": torch.randn(n, generator=g),
            }, strict=False)
    return model.eval()


def plans_for(model: nn.Module, shape: tuple[int, ...], ratio: float, *, coupled: bool = False,
              round_to: int | None = None) -> tuple[Structure, tuple[GroupPlan, ...]]:
    """Finds the groups of `model` and selects `ratio` of each by L1."""
    structure = find_groups(model, torch.zeros(1, *shape), coupled=coupled)
    scores = [importance(model, g) for g in structure.groups]
    return structure, select(structure, scores, ratio, round_to)


def assert_removal_exact(model: nn.Module, shape: tuple[int, ...], *, coupled: bool = False) -> Structure:
    """Zeroes half of every group, removes it, and checks the logits did not move and the layers shrank."""
    structure, plans = plans_for(model, shape, 0.5, coupled=coupled)
    assert plans, "nothing to prune"
    zero_out(model, plans)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(x)
    params = sum(p.numel() for p in model.parameters())
    remove(model, plans, torch.zeros(1, *shape))
    with torch.no_grad():
        pruned = model(x)
    torch.testing.assert_close(pruned, dense, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < params
    modules = dict(model.named_modules())
    for plan in plans:
        for member in plan.group.layers:
            layer = modules[member.name]
            out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            assert out == plan.group.channels - len(plan.pruned)
    return structure


# --- which groups ----------------------------------------------------------------------------------------


def test_zoo_resnet_prunes_only_the_first_conv_of_each_block() -> None:
    """Paper layer choice on the zoo ResNet-20, found from the graph: block conv1s only; the residual stream
    (stem, conv2s, option-A pads) is one coupled, unmodelled group left alone even with coupled: true."""
    model = zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE)
    expected = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    for coupled in (False, True):
        structure = find_groups(model, torch.zeros(1, *RESNET_SHAPE), coupled=coupled)
        assert [g.root for g in structure.groups] == expected
        assert all(g.norms[0].name == g.root.replace("conv1", "bn1") for g in structure.groups)
        stream = dict(structure.skipped)["conv1"]
        assert "channel padding" in stream
        assert "residual add" in stream


def test_vgg_prunes_every_conv_but_the_first() -> None:
    """VGG-11: the first conv and the classifier are left alone; every other conv is its own group."""
    model = zoo.build("vgg11", num_classes=10, input_shape=(3, 32, 32))
    structure = find_groups(model, torch.zeros(1, 3, 32, 32), coupled=False)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [g.root for g in structure.groups] == convs[1:]
    assert {root for root, _ in structure.skipped} == {convs[0], "classifier"}


def test_imported_graph_groups_and_coupling(tmp_path: Path) -> None:
    """On an ONNX import, coupled groups are found from the adds: skipped by default, pruned with shared
    indices (and summed L1) when coupled: true; the stem's group stays out either way."""
    torch.manual_seed(0)
    model = imported(ConvShortcutNet(), tmp_path)
    plain = find_groups(model, torch.zeros(1, *IMAGE_SHAPE), coupled=False)
    assert [len(g.layers) for g in plain.groups] == [1, 1, 1]
    assert not any(g.coupled for g in plain.groups)
    coupled = find_groups(model, torch.zeros(1, *IMAGE_SHAPE), coupled=True)
    shared = [g for g in coupled.groups if g.coupled]
    assert len(shared) == 1
    assert len(shared[0].layers) == 3
    modules = dict(model.named_modules())
    by_hand = sum(modules[m.name].weight.abs().flatten(1).mean(1).double()[list(m.local)]
                  for m in shared[0].layers)
    torch.testing.assert_close(importance(model, shared[0]), by_hand)


def test_groups_not_verified_within_the_budget_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the trial removals run out of the analysis budget, the unverified groups are left alone with
    the reason instead of being pruned blind (or the job sitting in the stage)."""
    def spent(*_: object) -> None:
        raise groups.BudgetSpent("the trial removal exceeded its budget")

    monkeypatch.setattr(groups, "_breaks", spent)
    structure = find_groups(zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE),
                            torch.zeros(1, *RESNET_SHAPE), coupled=False)
    assert structure.groups == ()
    why = dict(structure.skipped)["layer1.0.conv1"]
    assert why == "not verified within the 30 CPU-second analysis budget"


# --- which filters ---------------------------------------------------------------------------------------


def test_selection_picks_the_smallest_l1_filters() -> None:
    """Mean |W| ranks the filters (sign ignored); ceil(pr*C) of them go; selection is deterministic."""
    middle = nn.Conv2d(4, 6, 3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), middle, nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))
    scale = torch.tensor([-5.0, 1.0, -4.0, 2.0, 6.0, -3.0])
    with torch.no_grad():
        middle.weight.copy_(scale.view(6, 1, 1, 1).expand(6, 4, 3, 3))
    structure, plans = plans_for(model, (3, 6, 6), 0.5)
    assert [g.root for g in structure.groups] == ["3", "6"]
    torch.testing.assert_close(importance(model, structure.groups[0]), scale.abs().double())
    assert plans[0].pruned == (1, 3, 5)
    assert plans_for(model, (3, 6, 6), 0.5)[1] == plans


@pytest.mark.parametrize(("channels", "ratio", "round_to", "kept"), [
    (16, 0.5, None, 8), (10, 0.7, None, 3), (10, 0.99, None, 1), (64, 0.9, None, 6),
    (16, 0.6, 8, 8), (64, 0.7, 8, 24), (10, 0.5, 8, 8), (6, 0.5, 8, 6),
])
def test_kept_count(channels: int, ratio: float, round_to: int | None, kept: int) -> None:
    """C - ceil(pr*C), never below one, rounded up to a multiple of round_to but never above C."""
    assert kept_count(channels, ratio, round_to) == kept


def test_round_to_shapes_after_removal() -> None:
    """With round_to 8 every pruned conv of the zoo ResNet keeps a multiple of 8 channels."""
    model = zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE).eval()
    _, plans = plans_for(model, RESNET_SHAPE, 0.7, round_to=8)
    remove(model, plans, torch.zeros(1, *RESNET_SHAPE))
    kept = [model.get_submodule(p.group.root).out_channels for p in plans]
    assert kept == [8] * 3 + [16] * 3 + [24] * 3


def test_flops_search_meets_the_target_with_the_smallest_ratio() -> None:
    """The searched ratio reaches the FLOPs reduction as measured; a slightly smaller one does not."""
    model = zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE).eval()
    example = torch.zeros(1, *RESNET_SHAPE)
    structure, _ = plans_for(model, RESNET_SHAPE, 0.5)
    ratio, measured = search_ratio(model, structure, example, 1.6, None)
    with pytest.raises(InvalidConfig, match="out of reach"):
        search_ratio(model, structure, example, 50.0, None)
    _, plans = plans_for(model, RESNET_SHAPE, ratio)
    remove(model, plans, example)
    dense = macs(zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE), example)
    assert measured == pytest.approx(dense / macs(model, example))
    assert measured >= 1.6
    smaller = zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE).eval()
    _, plans = plans_for(smaller, RESNET_SHAPE, ratio - 0.0011)
    remove(smaller, plans, example)
    assert dense / macs(smaller, example) < 1.6


# --- removal ---------------------------------------------------------------------------------------------


def test_removal_of_zeroed_filters_is_exact_on_zoo_resnet() -> None:
    """ResNet-20 with option-A shortcuts and random BN statistics."""
    torch.manual_seed(0)
    assert_removal_exact(randomize_bn(zoo.build("resnet20", num_classes=10, input_shape=RESNET_SHAPE)),
                         RESNET_SHAPE)


def test_removal_of_zeroed_filters_is_exact_on_vgg() -> None:
    """VGG-11 with BN: the last conv's channels reach the classifier through pool and flatten."""
    torch.manual_seed(0)
    vgg = zoo.build("vgg11", num_classes=10, input_shape=(3, 32, 32))
    assert_removal_exact(randomize_bn(vgg), (3, 32, 32))


@pytest.mark.parametrize("coupled", [False, True])
def test_removal_of_zeroed_filters_is_exact_on_imported_graph(tmp_path: Path, coupled: bool) -> None:
    """An ONNX-imported residual CNN (BN folded into biased convs); coupled: true shares indices at an add."""
    torch.manual_seed(0)
    model = imported(randomize_bn(ConvShortcutNet()), tmp_path)
    structure = assert_removal_exact(model, IMAGE_SHAPE, coupled=coupled)
    assert any(g.coupled for g in structure.groups) == coupled


class FixedReshapeNet(nn.Module):
    """Flattens with a constant shape: removing channels of conv2 cannot keep this graph working."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(384, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, 8, 8) to (B, 2) through view(-1, 6*8*8)."""
        out: torch.Tensor = self.fc(self.conv2(torch.relu(self.conv1(x))).view(-1, 384))
        return out


def test_a_group_whose_removal_breaks_the_graph_is_left_alone() -> None:
    """A constant-shape reshape after conv2: the trial removal finds it, the group is skipped with the reason,
    and removing it anyway is refused as unsupported_op, not a crash later."""
    model = FixedReshapeNet()
    structure = find_groups(model, torch.zeros(1, *IMAGE_SHAPE), coupled=False)
    assert [g.root for g in structure.groups] == []  # conv1 is the first conv; conv2 breaks the reshape
    assert "fixes a channel count" in dict(structure.skipped)["conv2"]
    forced = Group("conv2", 6, (Member("conv2", tuple(range(6))),), (), coupled=False)
    with pytest.raises(UnsupportedOp, match="fixes a channel count"):
        remove(model, [GroupPlan(forced, (0, 1, 2))], torch.zeros(1, *IMAGE_SHAPE))


# --- the l1 method ---------------------------------------------------------------------------------------


def _context(model: nn.Module, data: DatasetBundle, config: JobConfig) -> PruneContext:
    """A PruneContext on CPU with the real Trainer."""
    trainer = Trainer(data=data, finetune=config.finetune, device=torch.device("cpu"), seed=config.seed)
    return PruneContext(model=model, data=data, config=config, device=torch.device("cpu"), trainer=trainer)


def test_l1_end_to_end(image_data: DatasetBundle) -> None:
    """Registered as `l1`: removes half the filters of each prunable group, finetunes, reports the facts."""
    torch.manual_seed(0)
    config = JobConfig(method="l1", target=Target(pruning_ratio=0.5),
                       finetune=FinetuneConfig(epochs=2, batch_size=64, lr=0.05))
    ctx = _context(TinyResNet(), image_data, config)
    dense = copy.deepcopy(ctx.model)
    method = registry.get("l1")
    assert isinstance(method, L1Method)
    assert method.structured
    result = method.run(ctx)
    assert result.layers == [
        {"name": "conv1", "kind": "conv", "channels": 8, "kept_channels": 4},
        {"name": "down.0", "kind": "conv", "channels": 16, "kept_channels": 8},
    ]
    assert result.model.get_submodule("conv1").out_channels == 4
    assert result.model.get_submodule("fc").in_features == 8
    report = result.report
    finetune = [h for h in ctx.trainer.history if h["phase"] == "finetune"]
    assert len(finetune) == 2
    assert report["accuracy_after_first_finetune_epoch"] == finetune[0]["accuracy"]
    assert 0.0 <= report["accuracy_after_removal"] <= 1.0
    assert report["flops_reduction"]["requested"] is None
    assert report["flops_reduction"]["measured"] > 1.0
    assert report["groups"] == 2
    assert report["coupled_groups"].startswith("left alone")  # TinyResNet's residual stream holds the stem
    _, plans = plans_for(dense, IMAGE_SHAPE, 0.5)  # the same L1 selection, made on an untouched copy
    assert report["removed_channels"] == {p.group.root: list(p.pruned) for p in plans}


def test_l1_flops_target_reported_as_measured(image_data: DatasetBundle) -> None:
    """A flops_reduction target is met and reported as requested and measured."""
    torch.manual_seed(0)
    config = JobConfig(method="l1", target=Target(flops_reduction=1.3), finetune=FinetuneConfig(epochs=0))
    result = L1Method().run(_context(TinyResNet(), image_data, config))
    flops = result.report["flops_reduction"]
    assert flops["requested"] == 1.3
    assert flops["measured"] >= 1.3
    assert flops["macs_before"] / flops["macs_after"] == pytest.approx(flops["measured"])


def test_a_ratio_that_barely_cuts_flops_is_refused(image_data: DatasetBundle) -> None:
    """Ratio 0.5 on a model whose prunable groups hold a sliver of its compute would give ~1.00x fewer
    FLOPs: not met as measured, so the job is refused naming the shortfall and what to change."""
    torch.manual_seed(0)
    config = JobConfig(method="l1", target=Target(pruning_ratio=0.5), finetune=FinetuneConfig(epochs=0))
    with pytest.raises(InvalidConfig, match=r"only 1\.0\dx fewer FLOPs.*below the 1\.14x.*coupled: true"):
        L1Method().run(_context(SliverNet(image_data.num_classes), image_data, config))
