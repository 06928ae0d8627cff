"""The `prune` stage: structured pruning to a target ratio, then a short recovery distillation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..configs import PruneConfig
from ..models.hf import logits_of
from ..models.spec import base_of, architecture_summary, load_model_from_artifact, make_spec, save_weights
from ..progress import log
from ..train.context import Context
from ..train.distiller import distill_fit, evaluate
from ..train.losses import logit_kd_loss
from .structured import prune_structured


IMPORTANCE_EXAMPLES = 32


def run_prune(cfg: PruneConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    model = load_model_from_artifact(parent)
    before = architecture_summary(model)
    # The first examples of the train split: a trace input for torch-pruning and the batch Taylor
    # importance is scored on (only these are tokenized and run through the teacher).
    train = ctx.encoded("train", IMPORTANCE_EXAMPLES)
    idx = np.arange(len(train))
    example = train.batch(idx)

    def importance_loss(m):
        # Taylor importance is scored on the distillation objective the student is trained with.
        teacher = torch.from_numpy(ctx.teacher_logits("train", IMPORTANCE_EXAMPLES))
        return logit_kd_loss(logits_of(m, example), teacher, torch.from_numpy(train.labels), 2.0, 0.5)

    model.eval()
    prune_structured(model, example, cfg, parent.spec["family"], importance_loss)
    after = architecture_summary(model)
    log(f"prune: {before['params'] / 1e6:.3f}M -> {after['params'] / 1e6:.3f}M parameters "
        f"({1 - after['params'] / before['params']:.1%} removed)")
    metrics: dict = {"params_before": before["params"], "params_after": after["params"],
                     "before": before, "after": after}
    if cfg.recovery is not None:
        metrics["recovery"] = distill_fit(model, cfg.recovery, ctx, "prune recovery", key)
    metrics.update(evaluate(model, ctx, "pruned"))
    save_weights(model, out)
    base = base_of(parent.spec)
    return {"metrics": metrics, "spec": make_spec(model, base)}
