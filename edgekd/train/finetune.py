"""Fine-tuning on the task's own labels (cross-entropy): the teacher's training, and a student's warm start."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..configs import FinetuneConfig
from ..models.hf import logits_of
from ..progress import log
from .context import Context
from .loop import fit


def finetune_fit(model: torch.nn.Module, cfg: FinetuneConfig, ctx: Context, encoded, work_key: str, desc: str,
                 seed: int | None = None) -> dict:
    """Train `model` in place on the first cfg.max_train_examples of the train split (`encoded(split, n)`: read with
    the model's own tokenizer); returns fit's figures for the manifest."""
    train = encoded("train", cfg.max_train_examples)
    log(f"{desc}: {len(train)} examples for {cfg.epochs} epoch(s)")

    def loss_fn(m, batch, idx, labels):
        return F.cross_entropy(logits_of(m, batch), labels)

    return fit(model, train, cfg, loss_fn, seed=ctx.seed if seed is None else seed, desc=desc,
               work_dir=ctx.work_dir(work_key), runtime=ctx.runtime)
