"""The `distill` stage: build the student and train it on the teacher's softened outputs."""
from __future__ import annotations

from pathlib import Path

import torch

from ..configs import DistillConfig, KDConfig, StudentConfig
from ..context import Context
from ..models.hf import logits_of
from ..models.spec import make_spec, save_weights
from ..models.students import build_student
from ..progress import log
from .losses import logit_kd_loss
from .trainer import accuracy, fit, predict_logits


def kd_train(model: torch.nn.Module, cfg: KDConfig, ctx: Context, desc: str, work_key: str) -> dict:
    """Train `model` with logit KD against the (cached) teacher outputs; shared by distill, prune recovery and QAT."""
    train = ctx.encoded("train", cfg.max_train_examples)
    teacher = torch.from_numpy(ctx.teacher_logits("train", cfg.max_train_examples))

    def loss_fn(m, batch, idx, labels):
        return logit_kd_loss(logits_of(m, batch), teacher[idx], labels, cfg.temperature, cfg.alpha)

    return fit(model, train, cfg, loss_fn, seed=ctx.seed, desc=desc, work_dir=ctx.work_dir(work_key))


def evaluate(model: torch.nn.Module, ctx: Context, desc: str) -> dict:
    """Accuracy on dev and test, and argmax agreement with the teacher on test."""
    out = {}
    for split in ("dev", "test"):
        enc = ctx.encoded(split)
        logits = predict_logits(model, enc, desc=f"{desc} eval ({split})")
        out[f"{split}_accuracy"] = accuracy(logits, enc.labels)
        if split == "test":
            out["test_agreement"] = float((logits.argmax(-1) == ctx.teacher_logits("test").argmax(-1)).mean())
    return out


def run_distill(cfg: DistillConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    student_cfg: StudentConfig = ctx.recipe.student
    teacher = ctx.teacher_model()
    pad_id = getattr(ctx.tokenizer, "pad_token_id", 0) or 0
    student, base = build_student(student_cfg, teacher, parent.spec, ctx.task, ctx.data.num_labels, pad_id=pad_id)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    log(f"distill: student {student_cfg.kind} with {n_s / 1e6:.2f}M parameters (teacher {n_t / 1e6:.2f}M)")
    metrics = {"train": kd_train(student, cfg, ctx, "distill", key)}
    metrics.update(evaluate(student, ctx, "student"))
    save_weights(student, out)
    return {"metrics": metrics, "spec": make_spec(student, base)}
