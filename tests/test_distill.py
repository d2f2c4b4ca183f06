"""distillation_loss: KL(teacher || student) on the answer tokens only, with its temperature scaling; bad input."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from magma_core.errors import InvalidInputError  # noqa: E402
from magma_core.training.distill import distillation_loss  # noqa: E402

VOCAB = 7


def _case(seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 5, VOCAB, generator=generator)
    teacher = torch.randn(2, 5, VOCAB, generator=generator)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])  # rows (0,1),(0,2),(0,3),(1,0),(1,1) learn
    return student, teacher, labels


def test_zero_for_the_teacher_itself_and_positive_otherwise():
    student, teacher, labels = _case()
    assert distillation_loss(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(student, teacher, labels).item() > 0.01


def test_value_is_the_mean_kl_over_the_rows_that_predict_an_answer_token():
    student, teacher, labels = _case()
    rows = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    expected = 0.0
    for b, t in rows:
        p = torch.softmax(teacher[b, t], -1)
        q = torch.softmax(student[b, t], -1)
        expected += float((p * (p.log() - q.log())).sum())
    assert distillation_loss(student, teacher, labels).item() == pytest.approx(expected / len(rows), rel=1e-5)
    # Rows that predict an ignored label do not count, whatever their logits.
    changed = student.clone()
    changed[0, 0] += 50.0
    changed[1, 3:] -= 20.0
    assert distillation_loss(changed, teacher, labels).item() == pytest.approx(expected / len(rows), rel=1e-5)


def test_temperature_softens_both_and_scales_by_its_square():
    student, teacher, labels = _case(1)
    plain = distillation_loss(student / 2.0, teacher / 2.0, labels).item()
    assert distillation_loss(student, teacher, labels, temperature=2.0).item() == pytest.approx(4.0 * plain, rel=1e-5)


def test_gradient_moves_the_student_towards_the_teacher():
    student, teacher, labels = _case(2)
    student.requires_grad_(True)
    loss = distillation_loss(student, teacher, labels)
    loss.backward()
    with torch.no_grad():
        stepped = student - 1.0 * student.grad
    assert distillation_loss(stepped, teacher, labels).item() < loss.item()


@pytest.mark.parametrize("change, message", [
    ("vocab", "must share the vocabulary"),
    ("labels", "labels shape"),
    ("ignored", "no answer tokens"),
    ("temperature", "temperature must be > 0"),
])
def test_bad_input_is_refused(change, message):
    student, teacher, labels = _case()
    temperature = 1.0
    if change == "vocab":
        teacher = teacher[..., :-1]
    elif change == "labels":
        labels = labels[:, :-1]
    elif change == "ignored":
        labels = torch.full_like(labels, -100)
    else:
        temperature = -math.inf
    with pytest.raises(InvalidInputError, match=message):
        distillation_loss(student, teacher, labels, temperature=temperature)
