"""The distiller: teachers plus a weighted list of loss terms, trained by the one loop.

Distillation, pruning recovery and QAT all train through `distill_fit`, so every stage that
trains gets every loss term the distiller has. Teachers' outputs here are their logits on the
train split, computed once per run and cached (`Context.teacher_logits`); with several teachers
their soft targets are averaged by weight (in probability space).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..configs import KDConfig
from ..models.hf import logits_of
from .context import Context
from .loop import fit
from .losses import HardLabelCE, LogitKD, LossTerm, Outputs
from .predict import accuracy, predict_logits


@dataclass
class Teacher:
    """One teacher's cached logits on the train split (indexed by example) and its weight."""

    logits: np.ndarray
    weight: float = 1.0


class Distiller:
    def __init__(self, teachers: list[Teacher], terms: list[tuple[float, LossTerm]]):
        if not terms:
            raise ValueError("a distiller needs at least one loss term")
        self.teachers = teachers
        self.terms = [(w, t) for w, t in terms if w > 0]

    @classmethod
    def from_config(cls, cfg: KDConfig, teacher_logits: np.ndarray) -> "Distiller":
        """The recipe's logit distillation: alpha * T^2 * KL + (1 - alpha) * CE."""
        return cls([Teacher(teacher_logits)], [(cfg.alpha, LogitKD(cfg.temperature)), (1.0 - cfg.alpha, HardLabelCE())])

    def teacher_outputs(self, idx: np.ndarray, device: torch.device) -> Outputs:
        if len(self.teachers) == 1:
            return Outputs(torch.from_numpy(self.teachers[0].logits[idx]).to(device))
        total = sum(t.weight for t in self.teachers)
        probs = sum(t.weight / total * torch.softmax(torch.from_numpy(t.logits[idx]), -1) for t in self.teachers)
        return Outputs(torch.log(probs.clamp_min(1e-12)).to(device))  # log of the averaged distribution

    def loss(self, module: torch.nn.Module, batch: dict, idx: np.ndarray, labels: torch.Tensor) -> torch.Tensor:
        student = Outputs(logits_of(module, batch))
        teacher = self.teacher_outputs(idx, labels.device)
        return sum(w * term(student, teacher, labels) for w, term in self.terms)


def distill_fit(model: torch.nn.Module, cfg: KDConfig, ctx: Context, desc: str, work_key: str) -> dict:
    """Train `model` against the run's teacher with the recipe's loss; shared by distill, prune recovery and QAT."""
    train = ctx.encoded("train", cfg.max_train_examples)
    distiller = Distiller.from_config(cfg, ctx.teacher_logits("train", cfg.max_train_examples))
    return fit(model, train, cfg, distiller.loss, seed=ctx.seed, desc=desc, work_dir=ctx.work_dir(work_key),
               runtime=ctx.runtime)


def evaluate(model: torch.nn.Module, ctx: Context, desc: str, splits: tuple[str, ...] = ("dev", "test")) -> dict:
    """Accuracy on dev and test, and argmax agreement with the teacher on test (model selection reads dev only)."""
    out = {}
    for split in splits:
        enc = ctx.encoded(split)
        logits = predict_logits(model, enc, desc=f"{desc} eval ({split})", runtime=ctx.runtime)
        out[f"{split}_accuracy"] = accuracy(logits, enc.labels)
        if split == "test":
            out["test_agreement"] = float((logits.argmax(-1) == ctx.teacher_logits("test").argmax(-1)).mean())
    return out
