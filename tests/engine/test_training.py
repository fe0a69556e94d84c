"""The training loop: it learns, it is deterministic, it resumes exactly, and it stops when told to."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from torch import nn

from tests.engine.conftest import MemoryCheckpoints, TinyMLP, TinyResNet
from workers.compression.config import FinetuneConfig
from workers.compression.datasets import DatasetBundle
from workers.compression.errors import InvalidConfig, InvalidModel, JobStopped
from workers.compression.hooks import Progress
from workers.compression.methods.base import StepHooks
from workers.compression.training import Trainer, learning_rate

CPU = torch.device("cpu")
FINETUNE = FinetuneConfig(batch_size=32, lr=0.05)


class CountingHooks(StepHooks):
    """Counts steps and keeps a running sum, so a resumed run must restore hook state to match."""

    def __init__(self) -> None:
        self.steps = 0
        self.total = torch.zeros(())

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Adds the step number and the first weight's sum."""
        self.steps += 1
        self.total += step + float(next(model.parameters()).detach().sum())

    def state_dict(self) -> dict[str, Any]:
        """Returns the counters."""
        return {"steps": self.steps, "total": self.total.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the counters."""
        self.steps, self.total = int(state["steps"]), state["total"].clone()


def _trainer(data: DatasetBundle, **kwargs: Any) -> Trainer:
    """Builds a CPU trainer with seed 0 for the tiny data."""
    return Trainer(data=data, finetune=FINETUNE, device=CPU, seed=0, **kwargs)


def _model() -> TinyResNet:
    """Returns the same freshly initialized TinyResNet on every call."""
    torch.manual_seed(0)
    return TinyResNet()


def _run(trainer: Trainer, model: nn.Module, hooks: CountingHooks) -> None:
    """Runs the two-phase plan the resume tests interrupt: 2 epochs of SGD/step, 1.5 of AdamW/cosine."""
    trainer.plan([("first", 2), ("second", 1.5)])
    if not trainer.phase_done("first"):
        trainer.fit(model, phase="first", epochs=2, lr=0.05, schedule="step", hooks=hooks)
    trainer.remember("after_first", 0.5)
    trainer.fit(model, phase="second", epochs=1.5, lr=0.01, schedule="cosine", optimizer="adamw", hooks=hooks)


def _without_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drops the wall-clock fields, which differ between runs."""
    clock = {"seconds", "images_per_s", "data_wait_share"}
    return [{k: v for k, v in entry.items() if k not in clock} for entry in history]


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Tells whether two models hold bit-identical state."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_learns_the_learnable_data(image_data: DatasetBundle) -> None:
    """Loss falls and validation accuracy rises far above chance (0.25) in three epochs."""
    model, trainer = _model(), _trainer(image_data)
    before = trainer.evaluate(model)
    trainer.fit(model, phase="train", epochs=3, lr=0.05, schedule="constant")
    history = trainer.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["accuracy"] > max(before, 0.8)
    assert set(history[0]) == {"phase", "epoch", "loss", "accuracy", "lr", "seconds", "images_per_s",
                               "data_wait_share"}


def test_evaluate_keeps_the_model_mode(image_data: DatasetBundle) -> None:
    """Evaluation runs in eval mode and hands the model back in the mode it came in."""
    model, trainer = _model(), _trainer(image_data)
    model.train()
    trainer.evaluate(model)
    assert model.training
    model.eval()
    trainer.evaluate(model)
    assert not model.training


def test_same_seed_same_result(image_data: DatasetBundle) -> None:
    """Two runs with one seed end with identical weights and history on CPU."""
    runs = []
    for _ in range(2):
        model, hooks = _model(), CountingHooks()
        trainer = _trainer(image_data)
        _run(trainer, model, hooks)
        runs.append((model, _without_seconds(trainer.history), float(hooks.total)))
    assert _same_weights(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:]


def test_resume_mid_phase_matches_an_uninterrupted_run(image_data: DatasetBundle) -> None:
    """Stopped after epoch 1 of the first phase, a new trainer continues with epoch 2 and ends identical."""
    reference, ref_hooks, ref_store = _model(), CountingHooks(), MemoryCheckpoints()
    ref_trainer = _trainer(image_data, checkpoints=ref_store)
    _run(ref_trainer, reference, ref_hooks)
    assert ref_store.saved == [("first", 1), ("first", 2), ("second", 1), ("second", 2)]

    def stop_after_first_epoch(event: Progress) -> None:
        """Plays the runner receiving a cancel at the first epoch end."""
        if event.epoch_end:
            raise JobStopped("cancelled")

    store = MemoryCheckpoints()
    stopping = _trainer(image_data, checkpoints=store, on_progress=stop_after_first_epoch)
    with pytest.raises(JobStopped):
        _run(stopping, _model(), CountingHooks())
    assert store.saved == [("first", 1)]

    # A new attempt: new process state, a freshly built model, the same store.
    torch.manual_seed(999)
    model, hooks, events = _model(), CountingHooks(), list[Progress]()
    trainer = _trainer(image_data, checkpoints=store, on_progress=events.append)
    assert not trainer.phase_done("first")
    _run(trainer, model, hooks)
    assert [e.epoch for e in events if e.epoch_end] == [2, 1, 2]  # continued with epoch 2 of "first"
    assert _same_weights(model, reference)
    assert _without_seconds(trainer.history) == _without_seconds(ref_trainer.history)
    assert hooks.steps == ref_hooks.steps
    assert torch.equal(hooks.total, ref_hooks.total)
    assert trainer.recall("after_first") == 0.5


def test_resume_after_a_finished_phase(image_data: DatasetBundle) -> None:
    """A checkpoint taken at the end of a phase marks it done; the next phase starts from its weights."""
    reference = _model()
    _run(_trainer(image_data), reference, CountingHooks())
    store = MemoryCheckpoints()
    trainer = _trainer(image_data, checkpoints=store)
    trainer.fit(_model(), phase="first", epochs=2, lr=0.05, schedule="step", hooks=CountingHooks())
    trainer.remember("kept", "yes")
    blob_after_first = store.blob

    resumed = _trainer(image_data, checkpoints=MemoryCheckpoints(blob_after_first))
    assert resumed.phase_done("first")
    assert not resumed.phase_done("second")
    model = _model()
    _run(resumed, model, CountingHooks())  # skips "first": "second" loads its final weights
    assert _same_weights(model, reference)


def test_fit_of_a_finished_phase_only_restores_its_weights(image_data: DatasetBundle) -> None:
    """Calling fit for the finished phase of the checkpoint trains nothing but brings its weights back."""
    store = MemoryCheckpoints()
    trained = _model()
    _trainer(image_data, checkpoints=store).fit(trained, phase="first", epochs=1, lr=0.05, schedule="step")
    resumed, model, events = _trainer(image_data, checkpoints=store), _model(), list[Progress]()
    resumed.on_progress = events.append
    resumed.fit(model, phase="first", epochs=1, lr=0.05, schedule="step")
    assert _same_weights(model, trained)
    assert events == []


def test_checkpoint_loads_with_weights_only(image_data: DatasetBundle) -> None:
    """The blob holds only tensors and plain values: torch.load(weights_only=True) reads it."""
    store = MemoryCheckpoints()
    trainer = _trainer(image_data, checkpoints=store)
    trainer.fit(_model(), phase="p", epochs=1, lr=0.05, schedule="step", hooks=CountingHooks())
    assert store.blob is not None
    state = torch.load(io.BytesIO(store.blob), weights_only=True)
    assert state["phase"] == "p"
    assert state["epoch"] == 1
    assert state["phases_done"] == ["p"]
    assert {"model", "optimizer", "hooks", "rng", "history", "memory"} <= set(state)


def test_progress_one_event_per_step_and_fractional_epochs(image_data: DatasetBundle) -> None:
    """1.5 epochs is ceil(1.5 * steps/epoch) steps, one event each, epoch_end once per (partial) epoch."""
    events: list[Progress] = []
    trainer = _trainer(image_data, on_progress=events.append, progress_span=(0.1, 0.9))
    trainer.plan([("a", 1.5), ("b", 0.5)])
    trainer.fit(_model(), phase="a", epochs=1.5, lr=0.05, schedule="step")
    steps = math.ceil(1.5 * trainer.steps_per_epoch)
    assert len(events) == steps
    assert [e.step for e in events] == list(range(1, steps + 1))
    assert [e.epoch for e in events if e.epoch_end] == [1, 2]
    assert len(trainer.history) == 2
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
    assert fractions[0] > 0.1
    assert fractions[-1] < 0.9
    assert events[-1].metrics.keys() >= {"loss", "accuracy", "lr"}


def test_job_stopped_mid_epoch_propagates(image_data: DatasetBundle) -> None:
    """A JobStopped raised from a step event leaves fit at once, without a checkpoint."""
    store = MemoryCheckpoints()

    def stop_at_step_three(event: Progress) -> None:
        """Cancels at step 3."""
        if event.step == 3:
            raise JobStopped("lease lost")

    trainer = _trainer(image_data, on_progress=stop_at_step_three, checkpoints=store)
    with pytest.raises(JobStopped, match="lease lost"):
        trainer.fit(_model(), phase="p", epochs=2, lr=0.05, schedule="step")
    assert store.saved == []
    assert trainer.history == []


def test_divergence_after_healthy_steps_blames_the_learning_rate(image_data: DatasetBundle) -> None:
    """Weights blown up by the updates of a phase that started healthy: the learning rate is the lever."""

    class Poison(StepHooks):
        """Turns the weights into NaN after the first step, as a far too high LR would."""

        def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
            """Fills every parameter with NaN."""
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(InvalidConfig, match="lower the learning rate") as caught:
        _trainer(image_data).fit(_model(), phase="p", epochs=1, lr=0.05, schedule="step", hooks=Poison())
    assert "at step 2" in caught.value.message
    assert "no longer finite" in caught.value.message
    assert "no normalization layers" not in caught.value.message  # TinyResNet has BatchNorms


class _Overflowing(nn.Module):
    """Logits of inf - inf: NaN on every batch, with finite weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, 8, 8) to NaN logits (B, 4)."""
        big: torch.Tensor = self.fc(x.flatten(1)) * float("inf")
        return big - big


def test_nan_on_the_first_batch_does_not_blame_the_learning_rate(image_data: DatasetBundle) -> None:
    """A model whose outputs are not finite before any update is the model's (or data's) problem."""
    with pytest.raises(InvalidModel, match="before any update") as caught:
        _trainer(image_data).fit(_Overflowing(), phase="p", epochs=1, lr=1e-6, schedule="step")
    assert "not the cause" in caught.value.message
    assert "lower the learning rate" not in caught.value.message


def test_non_finite_weights_at_the_start_are_named(image_data: DatasetBundle) -> None:
    """Weights that arrive holding NaN are refused before training, naming the tensor."""
    model = _model()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(InvalidModel, match=r"'conv1\.weight' holds NaN or Inf before phase 'p'"):
        _trainer(image_data).fit(model, phase="p", epochs=1, lr=0.05, schedule="step")


def test_a_phase_that_starts_damaged_blames_the_start_not_the_rate(flat_data: DatasetBundle) -> None:
    """A loss far above chance before any update means the model arrived broken; the rate comes second."""

    class Poison(StepHooks):
        """Makes the weights NaN after the first step."""

        def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
            """Fills every parameter with NaN."""
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    torch.manual_seed(0)
    model = TinyMLP()
    with torch.no_grad():
        model.fc2.weight.mul_(1e4)  # logits in the thousands: a loss far above ln(4)
    with pytest.raises(InvalidConfig, match="started from a damaged model") as caught:
        _trainer(flat_data).fit(model, phase="p", epochs=1, lr=0.05, schedule="step", hooks=Poison())
    assert "lower the learning rate" not in caught.value.message


def test_blow_up_without_normalization_says_so(flat_data: DatasetBundle, tiny_mlp: nn.Module) -> None:
    """An unnormalized model that a huge rate blows up: the rate is blamed, and the missing
    normalization (what an eval-mode ONNX export leaves of a BN network) is named as the reason."""
    with pytest.raises(InvalidConfig, match="lower the learning rate") as caught:
        _trainer(flat_data).fit(tiny_mlp, phase="p", epochs=3, lr=1e12, schedule="constant")
    assert "no normalization layers" in caught.value.message


def test_learning_rate_schedules() -> None:
    """Step: x0.1 at 50% and 75% of the steps; cosine: from the base to ~0; constant: flat."""
    assert [learning_rate(1.0, "step", s, 8) for s in (0, 3, 4, 5, 6, 7)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )
    assert learning_rate(1.0, "cosine", 0, 10) == pytest.approx(1.0)
    assert learning_rate(1.0, "cosine", 5, 10) == pytest.approx(0.5)
    assert learning_rate(1.0, "cosine", 9, 10) < 0.03
    assert learning_rate(0.3, "constant", 7, 8) == 0.3


def test_hooks_see_one_based_steps(flat_data: DatasetBundle, tiny_mlp: nn.Module) -> None:
    """after_backward and after_step get the same 1-based step number, once per optimizer step."""
    seen: list[tuple[str, int]] = []

    class Record(StepHooks):
        """Records hook calls."""

        def after_backward(self, model: nn.Module, step: int) -> None:
            """Notes the call."""
            seen.append(("backward", step))

        def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
            """Notes the call."""
            seen.append(("step", step))

    trainer = _trainer(flat_data)
    trainer.fit(tiny_mlp, phase="p", epochs=1, lr=0.05, schedule="step", hooks=Record())
    n = trainer.steps_per_epoch
    assert seen == [(kind, s) for s in range(1, n + 1) for kind in ("backward", "step")]
