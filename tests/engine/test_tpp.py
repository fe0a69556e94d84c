"""TPP: the Gram term and its gradient, the lambda ramp, the penalty gradients, the zero-out, exact removal,
resume of the regularization phase, and the method end to end on the real Trainer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import torch
from torch import nn

from tests.engine.conftest import IMAGE_SHAPE, MemoryCheckpoints, TinyResNet
from tests.engine.test_structured import ConvShortcutNet, imported, plans_for
from workers.compression.config import FinetuneConfig, JobConfig, Target, TppOptions
from workers.compression.datasets import ArrayBundle, DatasetBundle
from workers.compression.errors import InvalidConfig, JobStopped
from workers.compression.hooks import Progress
from workers.compression.methods import registry
from workers.compression.methods.base import MethodResult, PruneContext
from workers.compression.methods.structured import remove
from workers.compression.methods.tpp import (
    REG_PHASE,
    RemovalMismatch,
    TppHooks,
    TppMethod,
    _is_zeroed,
    _val_outputs,
    gram_grad,
    gram_penalty,
)
from workers.compression.methods.tpp_schedule import LAMBDA_CEILING, make_tpp_schedule
from workers.compression.training import Trainer

# --- the math --------------------------------------------------------------------------------------------


def test_gram_term_and_gradient_on_a_hand_computed_case() -> None:
    """W = [[1,0],[0,1],[1,1]], filter 3 pruned: G ⊙ (1 - m m^T) = [[0,0,1],[0,0,1],[1,1,2]], so
    L = (1+1+1+1+4)/9 = 8/9 and dL/dW = (4/9) (G ⊙ M) W = (4/9) [[1,1],[1,1],[3,3]]."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    keep = torch.tensor([1.0, 1.0, 0.0])
    assert gram_penalty(w, keep).item() == pytest.approx(8 / 9)
    torch.testing.assert_close(gram_grad(w, keep), 4 / 9 * torch.tensor([[1.0, 1.0], [1.0, 1.0], [3.0, 3.0]]))


def test_gram_gradient_matches_autograd_on_a_conv_weight() -> None:
    """The analytic gradient equals autograd's for a (N, C, kh, kw) weight and an arbitrary mask."""
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    gram_penalty(w, keep).backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(gram_grad(w.detach(), keep), w.grad)


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (48, 4), (48, 4, 1, 1)])
def test_gram_gradient_matches_autograd_in_either_order(shape: tuple[int, ...]) -> None:
    """Wide layers on narrow inputs (N > D) take the D x D order; it equals autograd's gradient too."""
    seeded = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=seeded, dtype=torch.float64, requires_grad=True)
    keep = (torch.arange(shape[0]) % 3 != 0).double()
    gram_penalty(w, keep).backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(gram_grad(w.detach(), keep), w.grad)


def _hooks(model: nn.Module, **options: Any) -> TppHooks:
    """TppHooks over half of each prunable group of `model`, on the schedule `options` resolve to."""
    _, plans = plans_for(model, IMAGE_SHAPE, 0.5)
    parsed = TppOptions.model_validate(options)
    return TppHooks(model, plans, parsed, schedule=make_tpp_schedule(parsed, len(plans)))


# The authors' staircase, shrunk for tiny runs: +0.25 every 2 steps to 1 (8 steps), a 10-step hold with a
# group zeroed every 3 steps.
STAIRS = {"schedule": "authors", "scale": 1.0, "reg_granularity": 0.25, "update_interval": 2,
          "stabilize_steps": 10, "zero_out_interval": 3}


def test_authors_staircase_in_steps() -> None:
    """lambda += reg_granularity every update_interval steps up to lambda_max, then holds; group i is zeroed
    (i+1)*zero_out_interval steps after the ramp; the phase is ramp + hold steps long."""
    model = TinyResNet()
    hooks = _hooks(model, **STAIRS)
    schedule = hooks.schedule
    assert [hooks.lam(t) for t in range(11)] == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0]
    assert (schedule.ramp_steps, schedule.hold_steps, schedule.max_steps) == (8, 10, 18)
    assert schedule.zero_at(8) == [11, 14]
    assert schedule.gram_lambda(1.0) == 1.0


def test_a_deep_network_zeroes_several_groups_per_event() -> None:
    """Past 50 groups an authors' event zeroes consecutive groups, so the pass has at most 50 events: 101
    groups go 3 at a time (34 events), every group is zeroed within the hold, and the order is kept."""
    schedule = make_tpp_schedule(TppOptions(schedule="authors", zero_out_interval=50), groups=101)
    assert schedule.groups_per_zero_out == 3
    zero_at = schedule.zero_at(10)
    assert zero_at[:4] == [11, 11, 11, 12]
    assert zero_at[-1] == schedule.zeroed_by(10) == 10 + 34
    assert schedule.end(10) >= schedule.zeroed_by(10)
    assert make_tpp_schedule(TppOptions(schedule="authors"), groups=50).groups_per_zero_out == 1
    adaptive = make_tpp_schedule(TppOptions(zero_out_interval=50), groups=101)
    assert adaptive.hold_steps == 34  # a hold as long as the authors' pass, then every group at once
    assert adaptive.zero_at(10) == [44] * 101
    assert adaptive.regularized_until(10) == adaptive.zeroed_by(10) == adaptive.end(10) == 44


def test_default_schedule_is_the_authors_cifar_run_compressed_fifty_times() -> None:
    """Authors: +1e-4 every 10 steps to 1 (100,000 steps), 10,000 steps of hold, a layer every 100 steps.
    Scale 0.02: 1/50 of the steps (2,000 + 200, a layer every 2) and a ceiling 50 times higher (+0.25 every
    10 steps to 50), so the total pull sum(lambda) is theirs; the Gram term follows their lambda; scale 1 is
    theirs."""
    authors = make_tpp_schedule(TppOptions(schedule="authors", scale=1.0), groups=27)
    assert (authors.ramp_steps, authors.hold_steps, authors.zero_out_interval) == (100_000, 10_000, 100)
    assert authors.lam(55_555) == pytest.approx(0.5555)
    assert authors.gram_lambda(0.5555) == pytest.approx(0.5555)
    scaled = make_tpp_schedule(TppOptions(schedule="authors"), groups=9)
    assert (scaled.ramp_steps, scaled.hold_steps, scaled.zero_out_interval, scaled.max_steps) == (
        2000, 200, 2, 2200)
    assert scaled.increment == pytest.approx(0.25)
    assert scaled.lam(1111) == pytest.approx(27.75)  # 1/50 of the way through the authors' 55,550 steps
    assert scaled.lam(2150) == scaled.lambda_max == pytest.approx(50.0)
    assert scaled.gram_lambda(27.75) == pytest.approx(0.555)  # the authors' lambda at that point
    theirs = sum(map(authors.lam, range(110_000)))
    assert sum(map(scaled.lam, range(2200))) == pytest.approx(theirs, rel=0.01)
    tiny = make_tpp_schedule(TppOptions(schedule="authors", scale=1e-4), groups=9)
    assert tiny.lambda_max == LAMBDA_CEILING
    tight = make_tpp_schedule(TppOptions(schedule="authors", stabilize_steps=1000), groups=30)
    assert tight.zero_out_interval == 1
    assert tight.hold_steps == 30
    adaptive = make_tpp_schedule(TppOptions(), groups=9)
    assert adaptive.adaptive
    assert adaptive.hold_steps == 18
    assert adaptive.max_steps == 2000 + 18
    assert adaptive.increment == pytest.approx(0.05)  # ten times the scaled staircase
    assert adaptive.groups_per_zero_out == 1
    assert [adaptive.lam(t) for t in (190, 200, 300, 400)] == pytest.approx([0.95, 1.0, 2.0, 4.0])
    assert adaptive.lam(2000) == 1000.0  # doubles past lambda_max while it must, up to the stable ceiling
    assert adaptive.gram_lambda(2.0) == 1.0  # the Gram weight stays at the authors' ceiling


def _shrink_pruned(hooks: TppHooks, factor: float) -> None:
    """Multiplies every pruned filter, BN scale and shift by `factor`."""
    with torch.no_grad():
        for weight, bias, rows, _, is_norm, _ in hooks._members:
            weight[rows] *= factor
            if is_norm and bias is not None:
                bias[rows] *= factor


def _steps(hooks: TppHooks, model: nn.Module, n: int) -> None:
    """Runs `n` after_step calls (the schedule's bookkeeping, without training)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(n):
        hooks.after_step(model, optimizer, hooks.step + 1)


def test_adaptive_ramp_stops_once_pruned_norms_are_negligible() -> None:
    """The ramp ends at the first lambda update where every pruned filter, BN scale and shift is below
    norm_ratio of the kept ones; lambda freezes there and holds for the length of the authors' pass; the end
    of regularization is reported at the hold's end, right before every group is zeroed at once, and the
    phase then reports finished."""
    torch.manual_seed(0)
    model = TinyResNet()
    ratios: list[float] = []
    zeroed_when_reported: list[bool] = []
    hooks = _hooks(model, update_interval=5, zero_out_interval=100)  # scaled: 2 steps per group of hold

    def regularized(m: nn.Module, ratio: float) -> None:
        """Records the ratio and whether any group was already zeroed when the end was reported."""
        ratios.append(ratio)
        zeroed_when_reported.append(any(_is_zeroed(m, [plan]) for plan in hooks.plans))

    hooks.on_regularized = regularized
    assert hooks.norm_ratio() > 1e-3
    _steps(hooks, model, 5)
    assert hooks.ramp_end is None
    assert not hooks.finished()
    _shrink_pruned(hooks, 1e-4)
    assert hooks.norm_ratio() < 1e-3
    _steps(hooks, model, 4)
    assert hooks.ramp_end is None  # checked only when lambda is updated
    _steps(hooks, model, 1)
    assert hooks.ramp_end == 10
    assert hooks.lam(500) == hooks.lam(10)
    _steps(hooks, model, 3)
    assert not ratios
    assert not hooks.finished()
    assert not any(_is_zeroed(model, [plan]) for plan in hooks.plans)
    _steps(hooks, model, 1)  # two groups: a hold of 4 steps
    assert len(ratios) == 1
    assert ratios[0] < 1e-3
    assert zeroed_when_reported == [False]
    assert hooks.finished()
    for plan in hooks.plans:
        assert _is_zeroed(model, [plan])


def test_adaptive_ramp_gives_up_at_its_cap() -> None:
    """Norms that never fall end the ramp at max_reg_steps (the zero-out then reports its cost)."""
    model = TinyResNet()
    hooks = _hooks(model, update_interval=5, max_reg_steps=20)
    _steps(hooks, model, 19)
    assert hooks.ramp_end is None
    _steps(hooks, model, 1)
    assert hooks.ramp_end == 20


def test_penalty_gradients() -> None:
    """after_backward adds gram_weight*lambda*dL_gram/dW + lambda*W[p] to the layer and lambda*gamma_p,
    lambda*beta_p to its BN; kept BN channels get nothing; bn_reg / weight_reg / gram_weight switch terms."""
    torch.manual_seed(0)
    model = TinyResNet()
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"gram", "l2", "bn"}), ({"bn_reg": False, "weight_reg": False}, {"gram"}),
        ({"gram_weight": 0.0}, {"l2", "bn"}),
    ]
    for options, terms in cases:
        hooks = _hooks(model, **STAIRS, **options)
        hooks.step = 4  # lambda = 0.5
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hooks.after_backward(model, 3)
        plan = hooks.plans[0]
        rows = list(plan.pruned)
        keep = torch.ones(8)
        keep[rows] = 0.0
        w = model.conv1.weight.detach()
        expected = torch.zeros_like(w)
        if "gram" in terms:
            expected += 1000.0 * 0.5 * gram_grad(w, keep)
        if "l2" in terms:
            expected[rows] += 0.5 * w[rows]
        torch.testing.assert_close(model.conv1.weight.grad, expected)
        for param in (model.bn1.weight, model.bn1.bias):
            bn_expected = torch.zeros(8)
            if "bn" in terms:
                bn_expected[rows] = 0.5 * param.detach()[rows]
            torch.testing.assert_close(param.grad, bn_expected)
        assert model.conv2.weight.grad is not None
        assert not model.conv2.weight.grad.any()  # not a pruned layer's filters: untouched


# --- the regularization phase on the real Trainer --------------------------------------------------------


# One epoch of ramp (8 steps at batch 32: +0.125 a step) and one of hold, a group zeroed every 4 steps.
EPOCH_STAIRS = {"schedule": "authors", "scale": 1.0, "reg_granularity": 0.125, "update_interval": 1,
                "stabilize_steps": 8, "zero_out_interval": 4}


def _config(**options: object) -> JobConfig:
    """A tpp job: PR 0.5, the authors' staircase over one epoch and a hold of one, one finetune epoch."""
    return JobConfig(method="tpp", target=Target(pruning_ratio=0.5), seed=0,
                     finetune=FinetuneConfig(epochs=1, batch_size=32, lr=0.02, distill=False),
                     options={**EPOCH_STAIRS, **options})


def _context(model: nn.Module, data: DatasetBundle, config: JobConfig, **trainer_args: Any) -> PruneContext:
    """A PruneContext on CPU with the real Trainer."""
    trainer = Trainer(data=data, finetune=config.finetune, device=torch.device("cpu"), seed=config.seed,
                      **trainer_args)
    return PruneContext(model=model, data=data, config=config, device=torch.device("cpu"), trainer=trainer)


def test_stabilization_zeroes_exactly_and_removal_keeps_the_outputs(image_data: DatasetBundle,
                                                                   trained_cnn: TinyResNet) -> None:
    """After the phase the pruned filters and BN scale/shift are exactly zero (the momentum could not revive
    them), kept ones are not, and removing them leaves the logits and the accuracy unchanged."""
    model = trained_cnn
    _, plans = plans_for(model, IMAGE_SHAPE, 0.5)
    trainer = Trainer(data=image_data, finetune=FinetuneConfig(batch_size=32), device=torch.device("cpu"),
                      seed=0)
    options = TppOptions.model_validate(EPOCH_STAIRS)
    hooks = TppHooks(model, plans, options, schedule=make_tpp_schedule(options, len(plans)))
    trainer.fit(model, phase=REG_PHASE, epochs=2, lr=1e-3, schedule="constant", momentum=0.9, hooks=hooks)
    assert hooks.step == 16
    modules = dict(model.named_modules())
    for plan in plans:
        rows = list(plan.pruned)
        kept = [c for c in range(plan.group.channels) if c not in rows]
        conv, bn = modules[plan.group.layers[0].name], modules[plan.group.norms[0].name]
        for tensor in (conv.weight, bn.weight, bn.bias):
            assert isinstance(tensor, torch.Tensor)
            assert not tensor[rows].any()
            assert tensor[kept].abs().sum() > 0
    model.eval()
    assert isinstance(image_data, ArrayBundle)  # the tiny data lives in memory
    x = image_data.normalize(image_data.x_val)
    with torch.no_grad():
        before = model(x)
    accuracy = trainer.evaluate(model)
    remove(model, plans, torch.zeros(1, *IMAGE_SHAPE))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert trainer.evaluate(model) == accuracy


def test_tpp_end_to_end(image_data: DatasetBundle, trained_cnn: TinyResNet) -> None:
    """Registered as `tpp`: reports the accuracies around regularization and removal (equal across removal),
    the budget in steps and the layers; the model is physically smaller."""
    ctx = _context(trained_cnn, image_data, _config())
    dense_accuracy = ctx.trainer.evaluate(trained_cnn)
    method = registry.get("tpp")
    assert isinstance(method, TppMethod)
    assert method.structured
    result = method.run(ctx)
    report = result.report
    assert report["regularization_steps"] == 16
    assert report["schedule"] | {"lambda_at_zero_out": 1.0} == {
        "mode": "authors", "lambda_increment": 0.125, "update_interval": 1, "ramp_steps": 8, "hold_steps": 8,
        "zero_out_interval": 4, "groups_per_zero_out": 1, "max_steps": 16, "lambda_at_zero_out": 1.0}
    assert report["zero_out_cost"] == pytest.approx(
        report["accuracy_after_regularization"] - report["accuracy_after_zero_out"])
    assert report["distill"] is None
    assert report["accuracy_before_removal"] == report["accuracy_after_removal"]
    assert report["accuracy_before_regularization"] == dense_accuracy
    assert report["accuracy_after_regularization"] == ctx.trainer.history[0]["accuracy"]  # end of the ramp
    phases = [h["phase"] for h in ctx.trainer.history]
    assert phases == [REG_PHASE, REG_PHASE, "finetune"]
    assert report["accuracy_after_first_finetune_epoch"] == ctx.trainer.history[-1]["accuracy"]
    assert report["options"]["gram_weight"] == 1000.0
    assert report["pruning_ratio"] == 0.5
    assert [(e["name"], e["kept_channels"]) for e in result.layers] == [("conv1", 4), ("down.0", 8)]
    assert result.model.get_submodule("conv1").out_channels == 4


def test_tpp_on_imported_coupled_graph(image_data: DatasetBundle, tmp_path: Path) -> None:
    """An ONNX import with coupled: true: the residual group's three convs are zeroed and removed together,
    exactly (no BN left: the exporter folded it, so the biases are zeroed too)."""
    torch.manual_seed(0)
    model = imported(ConvShortcutNet(), tmp_path)
    config = _config(coupled=True)
    result = TppMethod().run(_context(model, image_data, config))
    report = result.report
    assert report["accuracy_before_removal"] == report["accuracy_after_removal"]
    kept = {e["name"]: e["kept_channels"] for e in result.layers}
    assert len(kept) == 6
    assert len({kept[n] for n in kept if n.startswith(("b2", "short", "c2"))}) == 1


# Adaptive, fast: lambda +0.2 a step to 1 (step 5), then doubled every 2 steps, at most 40 steps; then a
# group zeroed every 8 steps.
FAST_ADAPTIVE = {"schedule": "adaptive", "scale": 1.0, "reg_granularity": 0.2, "growth": 1.0,
                 "update_interval": 1, "doubling_steps": 2, "max_reg_steps": 40, "zero_out_interval": 8}


@pytest.mark.parametrize(("stop_at", "options"), [
    ((REG_PHASE, 1), {}), ((REG_PHASE, 2), {}), (("finetune", 1), {}),
    ((REG_PHASE, 1), FAST_ADAPTIVE), ((REG_PHASE, 2), FAST_ADAPTIVE),
])
def test_resume_continues_the_regularization_phase(image_data: DatasetBundle, trained_cnn: TinyResNet,
                                                  stop_at: tuple[str, int], options: dict[str, Any]) -> None:
    """A job stopped mid-phase (lambda, the adaptive ramp's end and the zero-out schedule restored from the
    hooks' state), right after the phase (its final weights restored before removal) or in finetuning
    (structure rebuilt from the recorded plan) ends bit-identical to an uninterrupted one, with the same
    report."""
    dense = copy.deepcopy(trained_cnn.state_dict())

    def attempt(store: MemoryCheckpoints | None, stop: tuple[str, int] | None) -> MethodResult:
        """Runs tpp from the dense weights; `stop` raises JobStopped at that epoch end."""
        def on_progress(event: Progress) -> None:
            """Stops the job once the chosen epoch has been checkpointed."""
            if stop is not None and event.epoch_end and store is not None and store.saved[-1] == stop:
                raise JobStopped("test")

        model = TinyResNet()
        model.load_state_dict(dense)
        ctx = _context(model, image_data, _config(**options), checkpoints=store, on_progress=on_progress)
        return TppMethod().run(ctx)

    reference = attempt(None, None)
    assert reference.report["schedule"]["mode"] == options.get("schedule", "authors")
    store = MemoryCheckpoints()
    with pytest.raises(JobStopped):
        attempt(store, stop_at)
    resumed = attempt(store, None)
    assert resumed.report == reference.report
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_gram_steps_are_bounded_on_stiff_narrow_layers() -> None:
    """A 2-filter layer with large weights gets a Gram step of at most MAX_GRAM_STEP of its norm (it
    diverged otherwise); a well-scaled layer's term passes unchanged."""
    from workers.compression.methods.tpp import MAX_GRAM_STEP, bounded_step, gram_grad

    stiff = torch.full((2, 48, 1, 1), 2.0)
    term = 1000.0 * gram_grad(stiff, torch.tensor([1.0, 0.0]))
    step = bounded_step(term, stiff, lr=1e-3)
    assert float(1e-3 * step.norm()) == pytest.approx(MAX_GRAM_STEP * float(stiff.norm()), rel=1e-5)
    torch.testing.assert_close(step / step.norm(), term / term.norm())  # same direction
    calm = torch.randn(16, 16, 3, 3) * 0.05
    small = 1000.0 * gram_grad(calm, (torch.arange(16) % 2).float())
    assert bounded_step(small, calm, lr=1e-3) is small


def test_adaptive_default_zeroes_out_for_free(image_data: DatasetBundle, trained_cnn: TinyResNet) -> None:
    """The adaptive schedule on a trained model (lambda grown 10x faster than the default, to keep the test
    short): the ramp stops below the 1e-3 norm ratio before its cap, and the zero-out costs at most 1 point
    (measured on the validation split); no warning."""
    config = JobConfig(method="tpp", target=Target(pruning_ratio=0.5), seed=0,
                       finetune=FinetuneConfig(epochs=0, batch_size=32, distill=False),
                       options={"growth": 100})
    report = TppMethod().run(_context(trained_cnn, image_data, config)).report
    assert report["norm_ratio_at_zero_out"] < 1e-3
    assert report["regularization_steps"] < report["schedule"]["max_steps"]
    assert 0.0 <= abs(report["zero_out_cost"]) <= 0.01
    assert report["accuracy_after_zero_out"] == report["accuracy_before_removal"]
    assert report["warnings"] == []


def test_a_costly_zero_out_warns_in_the_report_and_live_progress(image_data: DatasetBundle,
                                                                 trained_cnn: TinyResNet) -> None:
    """Zeroing at once (no regularization) costs accuracy: the report and every later progress event carry a
    warning that says what to change."""
    events: list[Progress] = []
    config = JobConfig(method="tpp", target=Target(pruning_ratio=0.5), seed=0,
                       finetune=FinetuneConfig(epochs=1, batch_size=32, distill=False),
                       options={"max_reg_steps": 0})
    report = TppMethod().run(_context(trained_cnn, image_data, config, on_progress=events.append)).report
    assert report["regularization_steps"] == 0
    assert report["zero_out_cost"] > 0.01
    assert len(report["warnings"]) == 1
    assert "max_reg_steps" in report["warnings"][0]
    assert events[-1].warnings == tuple(report["warnings"])


def test_the_removal_check_compares_logits_not_accuracy(image_data: DatasetBundle) -> None:
    """Unchanged logits pass; a 1% change of the classifier (accuracy may not move at all) is caught."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    trainer = Trainer(data=image_data, finetune=FinetuneConfig(epochs=1), device=torch.device("cpu"), seed=0)
    accuracy, before = _val_outputs(trainer, model)
    assert _val_outputs(trainer, model, compare_to=before)[0] == accuracy
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
    with pytest.raises(RemovalMismatch, match="moved the logits"):
        _val_outputs(trainer, model, compare_to=before)


def test_a_removal_check_on_a_diverged_model_is_a_typed_refusal(image_data: DatasetBundle) -> None:
    """Where float32 rounding moves the logits by a sizeable share of their scale, the model diverged:
    the job gets invalid_config naming it, not an internal error about the removal."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    trainer = Trainer(data=image_data, finetune=FinetuneConfig(epochs=1), device=torch.device("cpu"), seed=0)
    _, before = _val_outputs(trainer, model)
    moved = [logits + 1.0 for logits in before]
    with patch("workers.compression.methods.tpp.excess", return_value=(1.0, 1e9)), \
            pytest.raises(InvalidConfig, match="diverged"):
        _val_outputs(trainer, model, compare_to=moved)
