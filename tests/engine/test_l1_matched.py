"""The budget-matched L1 control: `extra_steps` at constant `extra_lr` after removal, before the finetune."""

from __future__ import annotations

import torch

from tests.engine.conftest import TinyResNet
from workers.compression.config import FinetuneConfig, JobConfig, Target
from workers.compression.datasets import DatasetBundle
from workers.compression.methods import registry
from workers.compression.methods.base import PruneContext
from workers.compression.methods.structured import EXTRA_PHASE, FINETUNE_PHASE
from workers.compression.training import Trainer


def test_extra_steps_run_between_removal_and_finetune(trained_cnn: TinyResNet, image_data: DatasetBundle,
                                                      ) -> None:
    """12 extra steps (one and a half epochs of 8) at LR 1e-3, then one finetune epoch; the report says how
    many, and distillation (on by default) is reported."""
    config = JobConfig(method="l1", target=Target(pruning_ratio=0.5), seed=0,
                       finetune=FinetuneConfig(epochs=1, batch_size=32, lr=0.02),
                       options={"extra_steps": 12, "extra_lr": 1e-3})
    trainer = Trainer(data=image_data, finetune=config.finetune, device=torch.device("cpu"), seed=0)
    ctx = PruneContext(model=trained_cnn, data=image_data, config=config, device=torch.device("cpu"),
                       trainer=trainer)
    report = registry.get("l1").run(ctx).report
    assert [h["phase"] for h in trainer.history] == [EXTRA_PHASE, EXTRA_PHASE, FINETUNE_PHASE]
    assert [h["lr"] for h in trainer.history[:2]] == [1e-3, 1e-3]  # constant; the finetune's step LR after
    assert report["extra_steps"] == 12
    assert report["distill"] == {"alpha": 0.5, "temperature": 4.0}
