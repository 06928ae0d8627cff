"""One training loop for every stage that trains (teacher fine-tune, distillation, pruning
recovery, QAT): AdamW, linear warm-up/decay, rich progress, resumable checkpoints, and numerical
fault detection.

Determinism: the batch order of epoch e comes from numpy's generator seeded with (seed, e), so a
resumed run replays exactly the batches the killed one would have seen; torch's RNG (dropout) is
checkpointed.
"""
from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from ..configs import TrainConfig
from ..data.batching import Encoded, batch_indices
from ..errors import Interrupted, TrainingFault
from ..models.hf import logits_of
from ..progress import log, progress
from .checkpoint import load_checkpoint, save_checkpoint

LOSS_WINDOW = 50  # final_loss = mean of the last 50 steps (kept in checkpoints so a resumed run reports the same)
LossFn = Callable[[torch.nn.Module, dict, np.ndarray, torch.Tensor], torch.Tensor]


def fit(model: torch.nn.Module, train: Encoded, cfg: TrainConfig, loss_fn: LossFn, *, seed: int, desc: str,
        work_dir: Path | None = None, max_grad_norm: float = 1.0, params=None) -> dict:
    torch.manual_seed(seed)
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)

    step = 0
    losses: list[float] = []
    if work_dir is not None:
        pos = load_checkpoint(work_dir, model, optimizer, scheduler)
        if pos is not None:
            step = pos["step"]
            losses = pos.get("recent_losses", [])
            log(f"[yellow]{desc}: resuming from the checkpoint at step {step}/{total}[/]")

    interrupted = {"flag": False}

    def _on_sigint(signum, frame):  # finish the current step, checkpoint, then stop
        interrupted["flag"] = True

    previous_handler = signal.signal(signal.SIGINT, _on_sigint) if _main_thread() else None
    model.train()
    try:
        with progress(total, desc) as advance:
            advance(step)
            while step < total:
                epoch, offset = divmod(step, steps_per_epoch)
                rng = np.random.default_rng([seed, epoch])
                batches = batch_indices(n, cfg.batch_size, shuffle=True, rng=rng)
                for idx in batches[offset:]:
                    if step >= total:
                        break
                    batch = train.batch(idx)
                    labels = torch.from_numpy(train.labels[idx])
                    loss = loss_fn(model, batch, idx, labels)
                    if not torch.isfinite(loss):
                        raise TrainingFault(
                            f"{desc}: the loss became {loss.item()} at step {step + 1}. Likely cause: a learning rate "
                            f"too high (lr={cfg.lr}) or bad inputs; lower the lr. The last good checkpoint is kept"
                            f"{' in ' + str(work_dir) if work_dir else ''}."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    if not torch.isfinite(grad_norm):
                        raise TrainingFault(
                            f"{desc}: gradients exploded (norm {grad_norm.item()}) at step {step + 1}. Lower the "
                            f"learning rate (lr={cfg.lr}); the last good checkpoint is kept."
                        )
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    losses.append(loss.item())
                    advance(1, loss=float(np.mean(losses[-20:])))
                    if work_dir is not None and (step % cfg.checkpoint_every == 0 or interrupted["flag"]):
                        losses = losses[-LOSS_WINDOW:]
                        save_checkpoint(work_dir, model, optimizer, scheduler,
                                        {"step": step, "recent_losses": losses})
                    if interrupted["flag"]:
                        raise Interrupted(
                            f"{desc}: interrupted at step {step}/{total}; a checkpoint was saved"
                            f"{' in ' + str(work_dir) if work_dir else ''}. Run the same command again to resume."
                        )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    model.eval()
    return {"steps": total, "final_loss": float(np.mean(losses[-LOSS_WINDOW:])) if losses else None}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Logits for every example, in order. Texts are batched by length (less padding), then un-sorted."""
    model.eval()
    n = len(data)
    order = np.argsort([len(x) for x in data.ids], kind="stable") if data.ids is not None else np.arange(n)
    out = np.zeros((n, 0), dtype=np.float32)
    chunks = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    with progress(len(chunks), desc or "predict") as advance:
        for idx in chunks:
            logits = logits_of(model, data.batch(idx)).float().numpy()
            if out.shape[1] == 0:
                out = np.zeros((n, logits.shape[1]), dtype=np.float32)
            out[idx] = logits
            advance()
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())
