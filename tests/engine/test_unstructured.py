"""Gradual unstructured pruning (magnitude and WeightMom): scores, quotas, masks, optimizer state, resume,
and the method end to end on the real Trainer with a tiny MLP."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from workers.compression.config import DataOptions, FinetuneConfig, JobConfig, Target
from workers.compression.datasets import from_arrays
from workers.compression.errors import InvalidConfig, JobStopped
from workers.compression.hooks import Progress
from workers.compression.methods import registry
from workers.compression.methods.base import MethodResult, PruneContext
from workers.compression.methods.masks import PrunableLayer, select_prunable
from workers.compression.methods.schedule import make_schedule
from workers.compression.methods.unstructured import GradualPruningHooks
from workers.compression.training import Trainer

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _mlp(seed: int = 0) -> nn.Sequential:
    """A tiny classifier, 8 features -> 3 classes; prunable weights 128 + 256 + 48 = 432."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _hooks(
    model: nn.Module, *, total: int = 40, t0: float = 0.0, t_end: float = 0.5, interval: int = 2,
    target: float = 0.8, beta: float = 0.5, gamma: float = 1.0,
) -> GradualPruningHooks:
    """Hooks over every Linear of `model` with a schedule of `total` steps."""
    schedule = make_schedule(total_steps=total, t0=t0, t_end=t_end, interval=interval, final_sparsity=target)
    return GradualPruningHooks(select_prunable(model, []), schedule=schedule, beta=beta, gamma=gamma)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (x (16, 8), y (16,)) for a given step in every run, so runs can be compared exactly."""
    g = torch.Generator().manual_seed(step)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(
    model: nn.Module, hooks: GradualPruningHooks, opt: torch.optim.Optimizer, steps: range,
    check: Callable[[], None] | None = None,
) -> None:
    """A plain training loop with the hooks where the Trainer calls them; `check` runs after each step."""
    for step in steps:
        x, y = _batch(step)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        hooks.after_backward(model, step + 1)
        opt.step()
        hooks.after_step(model, opt, step + 1)
        if check is not None:
            check()


def _pruned_count(layers: list[PrunableLayer]) -> int:
    """Returns how many prunable weights are masked."""
    return sum(int(layer.pruned.sum()) for layer in layers)


# --- the math of one event ------------------------------------------------------------------------------


def test_gamma_one_equals_global_threshold_on_alive_scores() -> None:
    """gamma = 1 prunes exactly the weights a global threshold on m over the alive weights would."""
    hooks = _hooks(_mlp(), gamma=1.0)
    g = torch.Generator().manual_seed(1)
    for scale, layer in zip([1.0, 0.5, 2.0], hooks.layers, strict=True):  # layers differ in score scale
        layer.score = torch.rand(layer.score.shape, generator=g) * scale
    total = sum(layer.score.numel() for layer in hooks.layers)
    for sparsity in (0.3, 0.6):
        before = [layer.pruned.clone() for layer in hooks.layers]
        alive_scores = torch.cat([layer.score[~layer.pruned] for layer in hooks.layers])
        remove = round(sparsity * total) - _pruned_count(hooks.layers)
        threshold = torch.sort(alive_scores).values[remove - 1]
        hooks.prune_to(sparsity)
        for layer, old in zip(hooks.layers, before, strict=True):
            expected = old | (~old & (layer.score <= threshold))  # scores of pruned weights are now 0
            assert torch.equal(layer.pruned, expected), layer.name
        for layer in hooks.layers:  # re-draw the survivors' scores: the next event looks at alive ones only
            layer.score = torch.where(layer.pruned, 0.0, torch.rand(layer.score.shape, generator=g))
    assert _pruned_count(hooks.layers) == round(0.6 * total)


def test_gamma_zero_removes_the_same_fraction_from_every_layer() -> None:
    """gamma = 0 takes the same share of every layer's alive weights, even when the scores of one layer
    are far below the others (a global threshold would take them all from that layer)."""
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 20), nn.Linear(20, 20))  # 100, 200, 400 weights
    hooks = _hooks(model, gamma=0.0)
    hooks.layers[0].score *= 1e-3
    for sparsity in (0.5, 0.75):
        hooks.prune_to(sparsity)
        for layer in hooks.layers:
            assert int(layer.pruned.sum()) == sparsity * layer.pruned.numel(), layer.name


def test_ema_score_update_matches_hand_computation() -> None:
    """m <- beta m + (1 - beta)|w| after a step, starting at |w|; beta = 0 makes m equal |w|."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    hooks = _hooks(model, total=100, t0=0.5, t_end=0.9, beta=0.75)  # no event in the first steps
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, 4.0]]))
    hooks.after_step(model, opt, 1)
    assert torch.equal(hooks.layers[0].score, torch.tensor([[1.25, 1.5], [2.5, 4.0]]))
    with torch.no_grad():
        model.weight.zero_()
    hooks.after_step(model, opt, 2)
    assert torch.equal(hooks.layers[0].score, torch.tensor([[0.9375, 1.125], [1.875, 3.0]]))

    magnitude = _hooks(model, total=100, t0=0.5, t_end=0.9, beta=0.0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -7.0], [0.25, 3.0]]))
    magnitude.after_step(model, opt, 1)
    assert torch.equal(magnitude.layers[0].score, model.weight.detach().abs())


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_pruning_zeroes_weight_score_and_optimizer_state(kind: str) -> None:
    """Pruned positions lose their weight, score, and momentum / Adam moments; alive ones keep theirs."""
    model = _mlp()
    hooks = _hooks(model, total=100, t0=0.5, t_end=0.9)  # no scheduled event during the warm-up
    opt = OPTIMIZERS[kind](list(model.parameters()))
    _train(model, hooks, opt, range(3))
    state_keys = {"sgd": ["momentum_buffer"], "adamw": ["exp_avg", "exp_avg_sq"]}[kind]
    tracked = {
        (layer.name, name): tensor
        for layer in hooks.layers
        for name, tensor in [("weight", layer.weight.detach()), ("score", layer.score)]
        + [(key, opt.state[layer.weight][key]) for key in state_keys]
    }
    before = {key: tensor.clone() for key, tensor in tracked.items()}
    hooks.prune_to(0.5, opt)
    masks = {layer.name: layer.pruned for layer in hooks.layers}
    for (layer_name, name), tensor in tracked.items():
        pruned = masks[layer_name]
        assert before[layer_name, name][pruned].ne(0).any(), (layer_name, name)  # there was state to zero
        assert tensor[pruned].eq(0).all(), (layer_name, name)
        assert torch.equal(tensor[~pruned], before[layer_name, name][~pruned]), (layer_name, name)


# --- masks over training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_masks_hold_and_target_is_met_exactly(kind: str) -> None:
    """Under weight decay and momentum, pruned weights stay +0.0 after every step; the last event (step 20)
    hits round(0.8 * 432) = 346 exactly, and the masks stay frozen for the 20 steps after it."""
    model = _mlp()
    hooks = _hooks(model, total=40, t_end=0.5, interval=2, target=0.8)
    opt = OPTIMIZERS[kind](list(model.parameters()))
    counts: list[int] = []
    masks_before_step = [layer.pruned.clone() for layer in hooks.layers]

    def check() -> None:
        """Pruned weights are exactly +0.0 (no -0.0, which compresses worse); gradients were masked with
        the masks in force during the step (an event after the step prunes more)."""
        for layer, before in zip(hooks.layers, masks_before_step, strict=True):
            dead = layer.weight.detach()[layer.pruned]
            assert dead.eq(0).all(), layer.name
            assert not torch.signbit(dead).any(), layer.name
            assert layer.weight.grad is not None
            assert layer.weight.grad[before].eq(0).all(), layer.name
            before.copy_(layer.pruned)
        counts.append(_pruned_count(hooks.layers))

    _train(model, hooks, opt, range(40), check)
    assert hooks.events_done == len(hooks.schedule.event_steps) == 10
    assert counts == sorted(counts)
    assert counts[0] == 0 < counts[1]
    assert counts[19:] == [round(0.8 * 432)] * 21  # step 20 onwards: target reached, masks frozen
    nonzero = sum(int(layer.weight.count_nonzero()) for layer in hooks.layers)
    assert nonzero == 432 - 346


def test_after_step_zeroes_revived_weights() -> None:
    """Masks are re-applied after every step, so an update that moves a pruned weight anyway (an optimizer
    whose step does not vanish with the gradient) cannot revive it."""
    model = _mlp()
    hooks = _hooks(model, total=100, t0=0.5, t_end=0.9)
    hooks.prune_to(0.5)
    with torch.no_grad():
        for layer in hooks.layers:
            layer.weight.add_(1.0)
    hooks.after_step(model, torch.optim.SGD(model.parameters(), lr=0.0), 1)
    for layer in hooks.layers:
        assert layer.weight[layer.pruned].eq(0).all()
        assert layer.weight[~layer.pruned].ne(0).all()
        assert layer.score[layer.pruned].eq(0).all()


def test_state_dict_round_trip_resumes_identically() -> None:
    """Hooks state through torch.save/torch.load(weights_only=True) continues a run exactly."""
    straight = _mlp()
    hooks = _hooks(straight)
    opt = OPTIMIZERS["sgd"](list(straight.parameters()))
    _train(straight, hooks, opt, range(40))

    first = _mlp()
    hooks_a = _hooks(first)
    opt_a = OPTIMIZERS["sgd"](list(first.parameters()))
    _train(first, hooks_a, opt_a, range(13))  # stops between two events, mid-ramp
    buffer = io.BytesIO()
    state = {"model": first.state_dict(), "opt": opt_a.state_dict(), "hooks": hooks_a.state_dict()}
    torch.save(state, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = _mlp(seed=99)  # a different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    hooks_b = _hooks(resumed)
    opt_b = OPTIMIZERS["sgd"](list(resumed.parameters()))
    opt_b.load_state_dict(saved["opt"])
    hooks_b.load_state_dict(saved["hooks"])
    assert hooks_b.step == 13
    _train(resumed, hooks_b, opt_b, range(13, 40))
    for a, b in zip(hooks.layers, hooks_b.layers, strict=True):
        assert torch.equal(a.pruned, b.pruned)
        assert torch.equal(a.score, b.score)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters(), strict=True))


# --- layer selection --------------------------------------------------------------------------------------


def test_prunable_layers_are_conv_and_linear_weights_minus_excluded() -> None:
    """Conv/Linear weights are prunable (not biases, not BN); exclude_layers takes names and globs."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(2, 3),
    )
    layers = select_prunable(model, [])
    assert [(layer.name, layer.kind) for layer in layers] == [("0", "conv"), ("2", "conv"), ("4", "linear")]
    assert all(layer.weight.ndim >= 2 for layer in layers)
    assert [layer.name for layer in select_prunable(model, ["4"])] == ["0", "2"]
    assert [layer.name for layer in select_prunable(model, ["[2-4]"])] == ["0"]


def test_exclude_pattern_matching_nothing_is_refused() -> None:
    """A typo in exclude_layers is an invalid_config error naming the real layers, not a silent no-op."""
    with pytest.raises(InvalidConfig, match=r"match no Conv/Linear layer.*0, 2, 4"):
        select_prunable(_mlp(), ["fc*"])


def test_excluding_every_layer_is_refused() -> None:
    """Nothing left to prune is a config error."""
    with pytest.raises(InvalidConfig, match="nothing left to prune"):
        select_prunable(_mlp(), ["*"])


# --- the method on the real Trainer -----------------------------------------------------------------------


class _MemoryStore:
    """An in-memory CheckpointStore: keeps the latest blob."""

    def __init__(self) -> None:
        """Starts empty."""
        self.blob: bytes | None = None

    def load(self) -> bytes | None:
        """Returns the latest checkpoint."""
        return self.blob

    def save(self, blob: bytes, *, phase: str, epoch: int) -> None:
        """Keeps the checkpoint."""
        self.blob = blob


def _run(
    method: str, options: dict[str, Any], *, epochs: int = 10, stop_at_epoch: int | None = None,
    store: _MemoryStore | None = None,
) -> tuple[MethodResult, nn.Module]:
    """Runs a registered method on a tiny 3-class problem (64 samples, batch 16: 4 steps per epoch)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)).astype(np.float32) * 2
    y = rng.integers(0, 3, size=96)
    x = centers[y] + rng.normal(size=(96, 8)).astype(np.float32)
    config = JobConfig(
        method=method, target=Target(sparsity=0.75), options=options, seed=0,  # type: ignore[arg-type]
        finetune=FinetuneConfig(epochs=epochs, batch_size=16, lr=0.05), data=DataOptions(augment=False),
    )
    data = from_arrays(x[:64], y[:64], x[64:], y[64:], config.data)

    def stop(progress: Progress) -> None:
        """Simulates a killed worker at the end of an epoch (after its checkpoint)."""
        if progress.epoch_end and progress.epoch == stop_at_epoch:
            raise JobStopped("test")

    trainer = Trainer(
        data=data, finetune=config.finetune, device=torch.device("cpu"), seed=0,
        on_progress=stop if stop_at_epoch else None, checkpoints=store,
    )
    model = _mlp()
    ctx = PruneContext(model=model, data=data, config=config, device=torch.device("cpu"), trainer=trainer)
    return registry.get(method).run(ctx), model


@pytest.mark.parametrize("method", ["magnitude", "weightmom"])
def test_method_reaches_target_and_reports(method: str) -> None:
    """40 steps, the window closing at the first LR drop -> 20: the interval of 100 shrinks to 2 (10 events),
    so WeightMom's beta is 1 - 1/2; 0.75 of the 384 prunable weights (the last layer excluded) are zero
    exactly; the report says what was used and measured."""
    result, model = _run(method, {"exclude_layers": ["4"]})
    report = result.report
    assert (report["interval"], report["interval_requested"], report["t_end_step"]) == (2, 100, 20)
    assert report["pruning_events"] == 10
    assert (report["beta"], report["gamma"]) == ((0.0, 1.0) if method == "magnitude" else (0.5, 1.0))
    assert report["prunable_params"] == 384
    assert report["sparsity_prunable"] == 288 / 384
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    assert (report["params"], report["nonzero_params"]) == (params, nonzero)
    assert report["compression_ratio"] == params / nonzero
    assert report["sparsity_all"] == 1 - nonzero / params
    assert 0.0 <= report["accuracy_after_last_prune"] <= 1.0
    by_name = {layer["name"]: layer for layer in result.layers}
    assert by_name["4"]["density"] == 1.0
    assert not by_name["4"]["prunable"]
    assert sum(by_name[n]["nonzero"] for n in ("0", "2")) == 384 - 288
    # Plain weights: no torch.nn.utils.prune reparametrization left for the ONNX export to trip on.
    assert all(isinstance(m.weight, nn.Parameter) for m in model.modules() if isinstance(m, nn.Linear))
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())


def test_magnitude_is_weightmom_with_beta_zero_gamma_one() -> None:
    """One code path: magnitude and WeightMom(beta=0, gamma=1) give the very same model."""
    magnitude, a = _run("magnitude", {}, epochs=3)
    weightmom, b = _run("weightmom", {"beta": 0.0, "gamma": 1.0}, epochs=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert magnitude.report["accuracy_after_last_prune"] == weightmom.report["accuracy_after_last_prune"]


@pytest.mark.parametrize("stop_at_epoch", [3, 8])  # mid-ramp, and in the frozen tail
def test_resumed_job_matches_an_uninterrupted_one(stop_at_epoch: int) -> None:
    """A job killed after an epoch's checkpoint and resumed ends with the same weights and report."""
    straight, a = _run("weightmom", {"gamma": 0.5})
    store = _MemoryStore()
    with pytest.raises(JobStopped):
        _run("weightmom", {"gamma": 0.5}, stop_at_epoch=stop_at_epoch, store=store)
    resumed, b = _run("weightmom", {"gamma": 0.5}, store=store)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert resumed.report == straight.report


def test_zero_epochs_prunes_one_shot() -> None:
    """Without training the target is still met, in one event before (no) finetuning."""
    result, _ = _run("weightmom", {}, epochs=0)
    assert result.report["pruning_events"] == 1
    assert result.report["sparsity_prunable"] == round(0.75 * 432) / 432
    assert result.report["accuracy_after_last_prune"] is not None
