"""Distillation loss terms: small objects the distiller weighs and sums.

A term sees the student's outputs, the teachers' (combined) outputs and the labels of one batch
and returns a scalar. Adding a kind of knowledge to transfer (hidden states, attention maps) is
one more term here plus the outputs it needs; the loop and the stages do not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Outputs:
    """What a loss term may look at for one batch (on the training device)."""

    logits: torch.Tensor


class LossTerm:
    name: str = "term"

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LogitKD(LossTerm):
    """Hinton et al. 2015: T^2 * KL(softmax(t/T) || softmax(s/T)).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when
    T changes.
    """

    name = "logit_kd"

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        return (t * t) * F.kl_div(F.log_softmax(student.logits.float() / t, dim=-1),
                                  F.log_softmax(teacher.logits.float() / t, dim=-1),
                                  reduction="batchmean", log_target=True)


class HardLabelCE(LossTerm):
    """Cross-entropy with the task labels."""

    name = "hard_label_ce"

    def __call__(self, student: Outputs, teacher: Outputs | None, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student.logits.float(), labels)


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE: the default distiller's objective."""
    s, t = Outputs(student_logits), Outputs(teacher_logits)
    loss = alpha * LogitKD(temperature)(s, t, labels)
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * HardLabelCE()(s, t, labels)
    return loss
