"""Finetuning and evaluation: one readable loop shared by every method, with progress and checkpoints.

A method composes named phases (`fit(model, phase=...)`) with its own `StepHooks`. The loop is plain
(nanoGPT style): fresh optimizer per phase, learning rate computed per step, cross-entropy, one
evaluation and one checkpoint per epoch. Checkpoints hold only tensors and plain Python values, so they
load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import math
import random
import time
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.compression.config import FinetuneConfig
from workers.compression.datasets import DatasetBundle, no_single_sample
from workers.compression.distill import Teacher
from workers.compression.divergence import DivergenceWatch, grad_norm
from workers.compression.hooks import CheckpointStore, Progress, ProgressCallback
from workers.compression.methods.base import StepHooks
from workers.compression.throughput import TimedBatches

__all__ = ["CHECKPOINT_VERSION", "EVAL_BATCH_SIZE", "Trainer", "learning_rate", "seed_everything"]

CHECKPOINT_VERSION = 1
EVAL_BATCH_SIZE = 256  # evaluation holds no activations for backward, so bigger batches are cheap

Schedule = Literal["step", "cosine", "constant"]


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (CPU, and CUDA lazily) so a run is reproducible on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(base: float, schedule: Schedule, step: int, total: int) -> float:
    """Returns the LR of 0-based step `step` of `total`: step (x0.1 at 50% and 75%), cosine or constant."""
    if schedule == "step":
        milestones = sum(step >= math.floor(total * f) for f in (0.5, 0.75))
        return base * 0.1**milestones
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return base


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Captures every RNG the loop may touch, as tensors and plain values (weights_only-loadable)."""
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = np_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restores what `_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs named training phases over a dataset, evaluating each epoch, reporting progress, checkpointing.

    Resume: when `checkpoints.load()` returns a blob at construction, phases it marks finished report
    `phase_done(...) is True` (the method skips them), and `fit` of the interrupted phase restores the
    model weights, optimizer, scheduler, RNG, hooks state and epoch from it before continuing.
    Values a method must keep across attempts (e.g. accuracy right after removal) go through
    `remember`/`recall` and travel inside checkpoints.

    The blob is applied once, by the first `fit` that matches it:
    - `fit` of the checkpoint's own unfinished phase restores everything and continues with the next epoch;
    - `fit` of the checkpoint's own finished phase only restores its final weights and trains nothing
      (a method that changes structure after that phase, e.g. filter removal, calls it to get the weights
      back before rebuilding the structure);
    - `fit` of a later phase restores the weights (strictly: shapes must match) and starts that phase fresh.
    `fit` of any other finished phase does nothing.
    """

    def __init__(
        self,
        *,
        data: DatasetBundle,
        finetune: FinetuneConfig,
        device: torch.device,
        seed: int,
        on_progress: ProgressCallback | None = None,
        checkpoints: CheckpointStore | None = None,
        progress_span: tuple[float, float] = (0.05, 0.85),  # share of the whole job that training covers
    ) -> None:
        self.data = data
        self.finetune = finetune
        self.device = device
        self.seed = seed
        self.on_progress = on_progress
        self.checkpoints = checkpoints
        self.progress_span = progress_span
        seed_everything(seed)
        # Shuffling and augmentation draw from this generator only, so their stream is independent of
        # whatever else (dropout, a method's sampling) draws from the global one.
        self.generator = torch.Generator().manual_seed(seed)
        self._plan: list[tuple[str, int]] = []  # (phase, optimizer steps)
        self._history: list[dict[str, Any]] = []
        self._done: list[str] = []
        self._memory: dict[str, float | int | str] = {}
        self._warnings: list[str] = []  # sent with every later progress event, so live progress keeps them
        self._fraction = progress_span[0]  # of the last progress event
        self._pending: dict[str, Any] | None = None  # a resumed checkpoint not yet applied by `fit`
        blob = checkpoints.load() if checkpoints is not None else None
        if blob is not None:
            self._pending = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            self._history = list(self._pending["history"])
            self._done = list(self._pending["phases_done"])
            self._memory = dict(self._pending["memory"])

    @property
    def steps_per_epoch(self) -> int:
        """Returns the optimizer steps in one epoch at the configured batch size."""
        return math.ceil(self.data.train_samples / self.finetune.batch_size)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Returns one entry per finished epoch: phase, epoch, loss, accuracy, lr, seconds."""
        return list(self._history)

    def plan(self, phases: list[tuple[str, float]]) -> None:
        """Declares the phases (name, epochs) the method will run, so progress fractions and ETA add up."""
        self._plan = [(name, self._total_steps(epochs)) for name, epochs in phases]

    def evaluate(self, model: nn.Module) -> float:
        """Returns top-1 accuracy of `model` on the validation split (model left in its previous mode)."""
        was_training = model.training
        model.eval()
        correct, seen = 0, 0
        with torch.no_grad():
            for x, y in self.data.batches("val", EVAL_BATCH_SIZE, shuffle=False, device=self.device):
                correct += int((model(x).argmax(dim=1) == y).sum())  # logits (B, classes) -> (B,)
                seen += y.shape[0]
        model.train(was_training)
        return correct / max(seen, 1)

    def fit(
        self,
        model: nn.Module,
        *,
        phase: str,
        epochs: float,
        lr: float,
        schedule: Literal["step", "cosine", "constant"],
        optimizer: Literal["sgd", "adamw"] = "sgd",
        momentum: float | None = None,
        weight_decay: float | None = None,
        hooks: StepHooks | None = None,
        stage: str = "finetuning",
        teacher: Teacher | None = None,
        steps: int | None = None,
    ) -> None:
        """Trains `model` for `epochs` (fractional allowed: rounded up to whole steps), or exactly `steps`
        when given, with a fresh optimizer; hooks run around every step and may end the phase early
        (`hooks.finished()`); evaluates and checkpoints at each epoch end; honours JobStopped. With a
        `teacher` the loss distills its logits on the same batch into the model (distill.py).

        Hooks get the 1-based number of the step being taken within this phase.
        """
        hooks = hooks or StepHooks()
        total = self._total_steps(epochs) if steps is None else steps
        spe = self.steps_per_epoch
        n_epochs = math.ceil(total / spe)
        opt = self._optimizer(model, optimizer, lr, momentum, weight_decay)
        start_epoch = self._resume(model, phase, opt, hooks)
        if phase in self._done:
            return
        if not any(name == phase for name, _ in self._plan):
            self._plan.append((phase, total))
        watch = DivergenceWatch(phase=phase, classes=self.data.num_classes)
        watch.start(model)
        model.train()
        for epoch in range(start_epoch + 1, n_epochs + 1):
            t_epoch = time.perf_counter()
            first, last = (epoch - 1) * spe, min(epoch * spe, total)  # this epoch's steps [first, last)
            loss_sum, loss_n = 0.0, 0
            step = first
            batches = TimedBatches(no_single_sample(self.data.batches(
                "train", self.finetune.batch_size, shuffle=True, generator=self.generator, device=self.device
            )))
            for x, y in batches:  # x (B, C, H, W) or (B, F), y (B,)
                step_lr = learning_rate(lr, schedule, step, total)
                for group in opt.param_groups:
                    group["lr"] = step_lr
                watch.check_inputs(x, step + 1)
                logits = model(x)  # (B, classes)
                if teacher is None:
                    loss = hard = F.cross_entropy(logits, y)
                else:
                    loss, hard = teacher.loss(logits, x, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise watch.error(model, step=step + 1, loss=value, lr=step_lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                hooks.after_backward(model, step + 1)
                norm = grad_norm(model)
                if not math.isfinite(norm):
                    raise watch.error(model, step=step + 1, loss=norm, lr=step_lr, what="gradient norm")
                watch.observe(float(hard.detach()), norm)  # cross-entropy: chance level is judged on it
                opt.step()
                hooks.after_step(model, opt, step + 1)
                loss_sum, loss_n, step = loss_sum + value * y.shape[0], loss_n + y.shape[0], step + 1
                if step == last or hooks.finished():
                    break
                self._emit(stage, phase, epoch, n_epochs, step, total,
                           {"loss": value, "lr": step_lr, **batches.metrics()})
            speed = batches.metrics()  # the training pass only, before evaluation
            accuracy, mean_loss = self.evaluate(model), loss_sum / max(loss_n, 1)
            self._history.append({
                "phase": phase, "epoch": epoch, "loss": mean_loss, "accuracy": accuracy,
                "lr": step_lr, "seconds": time.perf_counter() - t_epoch, **speed,
            })
            if epoch == n_epochs or hooks.finished():
                self._done.append(phase)
            self._save(model, phase, epoch, opt, hooks)
            metrics = {"loss": mean_loss, "accuracy": accuracy, "lr": step_lr, **speed}
            self._emit(stage, phase, epoch, n_epochs, step, total, metrics, epoch_end=True)
            if phase in self._done:
                break
        if phase not in self._done:  # a phase of zero steps
            self._done.append(phase)

    def warn(self, message: str) -> None:
        """Adds a warning to the live progress (every later event carries it) and sends it at once."""
        if message not in self._warnings:
            self._warnings.append(message)
        if self.on_progress is not None:
            event = Progress(stage="pruning", fraction=self._fraction, warnings=tuple(self._warnings))
            self.on_progress(event)

    def phase_done(self, phase: str) -> bool:
        """Tells whether a resumed checkpoint says `phase` already finished (the method then skips it)."""
        return phase in self._done

    def remember(self, key: str, value: float | int | str) -> None:
        """Keeps a value across attempts of the job (it travels in every later checkpoint)."""
        self._memory[key] = value

    def recall(self, key: str) -> float | int | str | None:
        """Returns a value kept by `remember`, from this attempt or a resumed checkpoint."""
        return self._memory.get(key)

    def _total_steps(self, epochs: float) -> int:
        """Returns the whole optimizer steps that `epochs` (maybe fractional) take."""
        return math.ceil(epochs * self.steps_per_epoch - 1e-9)

    def _optimizer(
        self, model: nn.Module, kind: str, lr: float, momentum: float | None, weight_decay: float | None,
    ) -> torch.optim.Optimizer:
        """Builds a fresh optimizer over the trainable parameters (defaults from the finetune config)."""
        params = [p for p in model.parameters() if p.requires_grad]
        decay = self.finetune.weight_decay if weight_decay is None else weight_decay
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        mom = self.finetune.momentum if momentum is None else momentum
        return torch.optim.SGD(params, lr=lr, momentum=mom, weight_decay=decay, nesterov=False)

    def _resume(self, model: nn.Module, phase: str, opt: torch.optim.Optimizer, hooks: StepHooks) -> int:
        """Applies a resumed checkpoint to this `fit` (rules in the class docstring); returns epochs done."""
        blob = self._pending
        if blob is None:
            return 0
        own_phase = blob["phase"] == phase
        if not own_phase and phase in self._done:
            return 0  # an earlier finished phase: the checkpoint belongs to a later one
        if not own_phase and blob["phase"] not in self._done:
            raise RuntimeError(
                f"checkpoint is from unfinished phase {blob['phase']!r} but the method resumed with {phase!r}"
            )
        self._pending = None
        model.load_state_dict(blob["model"], strict=True)
        _set_rng_state(blob["rng"], self.generator)
        if not own_phase or phase in self._done:
            return 0
        opt.load_state_dict(blob["optimizer"])
        hooks.load_state_dict(blob["hooks"])
        return int(blob["epoch"])

    def _save(
        self, model: nn.Module, phase: str, epoch: int, opt: torch.optim.Optimizer, hooks: StepHooks,
    ) -> None:
        """Writes the full training state at an epoch end, when a checkpoint store is attached."""
        if self.checkpoints is None:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "phase": phase,
            "epoch": epoch,
            "phases_done": list(self._done),
            "memory": dict(self._memory),
            "history": list(self._history),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "hooks": hooks.state_dict(),
            "rng": _rng_state(self.generator),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.checkpoints.save(buffer.getvalue(), phase=phase, epoch=epoch)

    def _emit(
        self, stage: str, phase: str, epoch: int, epochs: int, step: int, steps: int,
        metrics: dict[str, float], *, epoch_end: bool = False,
    ) -> None:
        """Sends one progress event, with the fraction of the whole job from the declared plan."""
        if self.on_progress is None:
            return
        before, total = 0, 0
        for name, n in self._plan:
            if name == phase:
                before = total
            total += n
        lo, hi = self.progress_span
        fraction = lo + (hi - lo) * (before + step) / max(total, 1)
        self._fraction = min(fraction, hi)
        self.on_progress(Progress(
            stage=stage, fraction=min(fraction, hi), epoch=epoch, epochs=epochs, step=step, steps=steps,
            metrics=metrics, epoch_end=epoch_end, warnings=tuple(self._warnings),
        ))
