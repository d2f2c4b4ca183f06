"""Knowledge distillation: a student learns the teacher's next-token distribution on the answer tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from magma_core.errors import InvalidInputError


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = -100, temperature: float = 1.0) -> torch.Tensor:
    """Mean KL(teacher || student) of the next-token distributions at the positions the data loss learns from
    (row t predicts labels[t + 1] where that label is not `ignore_index`), scaled by temperature**2 so its
    gradients keep their size whatever the temperature (Hinton et al., 2015).

    The teacher's distribution carries what the data's single answer does not: how near the runner-up tokens
    were (a number one cell away, the other gripper flag), which is what a small student learns fastest from.
    """
    if student_logits.shape != teacher_logits.shape:
        raise InvalidInputError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                                f"{tuple(teacher_logits.shape)} differ: the two models must share the vocabulary and prompt")
    if labels.shape != student_logits.shape[:2]:
        raise InvalidInputError(f"labels shape {tuple(labels.shape)} does not match the sequence {tuple(student_logits.shape[:2])}")
    if not temperature > 0:
        raise InvalidInputError(f"distillation temperature must be > 0, got {temperature}")
    learned = labels[:, 1:] != ignore_index
    if not bool(learned.any()):
        raise InvalidInputError("every label is ignored (-100): the batch has no answer tokens to distil")
    student = F.log_softmax(student_logits[:, :-1][learned].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1][learned].float() / temperature, dim=-1)
    per_token = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return per_token.mean() * temperature**2


__all__ = ["distillation_loss"]
