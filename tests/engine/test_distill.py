"""Distillation: the blended loss against hand formulas, the teacher frozen while the student trains, and the
`finetune.distill` config forms."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.engine.conftest import TinyResNet
from workers.compression.config import DistillOptions, FinetuneConfig
from workers.compression.datasets import DatasetBundle
from workers.compression.distill import distill_loss, make_teacher
from workers.compression.training import Trainer


def test_loss_is_alpha_t2_kl_plus_one_minus_alpha_ce() -> None:
    """alpha*T²*mean_b sum_c p_t (log p_t - log p_s) + (1-alpha)*CE, with p = softmax(logits / T)."""
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[1.0, 1.0, -2.0], [3.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    t, alpha = 2.0, 0.3
    p_t, p_s = torch.softmax(teacher / t, dim=1), torch.softmax(student / t, dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
    ce = -torch.log_softmax(student, dim=1)[torch.arange(2), target].mean()
    loss, hard = distill_loss(student, teacher, target, alpha=alpha, temperature=t)
    assert float(loss) == pytest.approx(float(alpha * t**2 * kl + (1 - alpha) * ce), rel=1e-6)
    assert float(hard) == pytest.approx(float(ce), rel=1e-6)
    only_ce, _ = distill_loss(student, teacher, target, alpha=0.0, temperature=t)
    assert float(only_ce) == pytest.approx(float(F.cross_entropy(student, target)), rel=1e-6)


def test_soft_gradient_is_t_times_the_softened_probability_gap() -> None:
    """d(T² KL)/d(student logits) = T (softmax(s/T) - softmax(t/T)) / B: the T² keeps the scale of CE's
    gradient (p - y) / B; identical logits give no soft loss and no soft gradient."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 5, generator=generator)
    target = torch.zeros(4, dtype=torch.long)
    t = 4.0
    loss, _ = distill_loss(student, teacher, target, alpha=1.0, temperature=t)
    loss.backward()  # type: ignore[no-untyped-call]
    expected = t * (torch.softmax(student.detach() / t, 1) - torch.softmax(teacher / t, 1)) / 4
    torch.testing.assert_close(student.grad, expected)
    same, _ = distill_loss(teacher, teacher, target, alpha=1.0, temperature=t)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_teacher_stays_frozen_while_the_student_trains(trained_cnn: TinyResNet, image_data: DatasetBundle,
                                                       ) -> None:
    """The teacher is a copy in eval mode with no gradients: training the student with it moves the student
    but leaves every teacher tensor (BatchNorm running statistics included) as it was."""
    finetune = FinetuneConfig(epochs=1, batch_size=32, lr=0.05)
    teacher = make_teacher(trained_cnn, finetune)
    assert teacher is not None
    before = copy.deepcopy(teacher.model.state_dict())
    student_before = copy.deepcopy(trained_cnn.state_dict())
    trainer = Trainer(data=image_data, finetune=finetune, device=torch.device("cpu"), seed=0)
    trainer.fit(trained_cnn, phase="finetune", epochs=1, lr=0.05, schedule="constant", teacher=teacher)
    assert not teacher.model.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(trained_cnn.state_dict()["conv1.weight"], student_before["conv1.weight"])
    assert teacher.model is not trained_cnn


def test_distill_config_forms() -> None:
    """`false` switches it off, `true` means the defaults, an object sets alpha and temperature."""
    assert FinetuneConfig.model_validate({"distill": False}).distill is False
    on = FinetuneConfig.model_validate({"distill": True}).distill
    assert on == DistillOptions(alpha=0.5, temperature=4.0)
    custom = FinetuneConfig.model_validate({"distill": {"alpha": 0.9, "temperature": 2.0}}).distill
    assert custom == DistillOptions(alpha=0.9, temperature=2.0)
    assert make_teacher(TinyResNet(), FinetuneConfig(distill=False)) is None
    with pytest.raises(ValueError, match="alpha"):
        FinetuneConfig.model_validate({"distill": {"alpha": 1.5}})
