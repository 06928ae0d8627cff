"""The one training loop for every stage that trains (teacher fine-tune, distillation, pruning
recovery, QAT): AdamW, linear warm-up/decay, optional weight averaging (EMA), mixed precision,
several processes (DDP), rich progress, resumable checkpoints, numerical fault detection and
throughput figures.

Determinism: the global batches of epoch e come from numpy's generator seeded with (seed, e) and
are bucketed by length; each process takes its shard of every global batch. So the batches do
not depend on the number of processes, and a resumed run replays exactly the batches the killed
one would have seen; every process's torch RNG (dropout) is checkpointed.
"""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_linear_schedule_with_warmup

from ..configs import TrainConfig
from ..data.batching import Encoded, batch_indices, bucketed_batches
from ..errors import EdgekdError, Interrupted, TrainingFault
from ..progress import log, progress
from .checkpoint import load_checkpoint, save_checkpoint
from .runtime import Runtime
from .selection import EpochSelection

LOSS_WINDOW = 50  # final_loss = mean of the last 50 steps (kept in checkpoints so a resumed run reports the same)
# loss_fn(module, batch on the device, global example indices of this shard, labels on the device)
LossFn = Callable[[torch.nn.Module, dict, np.ndarray, torch.Tensor], torch.Tensor]


def epoch_batches(train: Encoded, batch_size: int, seed: int, epoch: int, world_size: int = 1) -> list[np.ndarray]:
    """The global batches of one epoch: length-bucketed for text, shuffled for images.

    A last batch with fewer examples than processes is dropped (every process needs one).
    """
    rng = np.random.default_rng([seed, epoch])
    lengths = train.lengths
    batches = (bucketed_batches(lengths, batch_size, rng) if lengths is not None
               else batch_indices(len(train), batch_size, shuffle=True, rng=rng))
    return [b for b in batches if len(b) >= world_size]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def fit(model: torch.nn.Module, train: Encoded, cfg: TrainConfig, loss_fn: LossFn, *, seed: int, desc: str,
        work_dir: Path | None = None, runtime: Runtime | None = None, max_grad_norm: float = 1.0,
        params=None, on_step: Callable[[float], None] | None = None,
        select: Callable[[torch.nn.Module], float] | None = None, patience: int | None = None) -> dict:
    """Train `model` in place on `runtime` (default: one CPU process); returns the figures for the manifest.

    on_step(progress) is called before each optimizer step with the share of training done (0 to 1; it follows
    the checkpointed step, so a resumed run continues a schedule where it stopped). The model is left on the
    runtime's device, in eval mode.

    select(model) -> a held-out score (dev accuracy), called after each epoch and at the end: the model ends with
    the weights of the best-scoring epoch (selection.py), and with `patience` training stops after that many epochs
    without a better score.
    """
    rt = runtime or Runtime.cpu()
    if cfg.batch_size < rt.world_size:
        raise EdgekdError(f"{desc}: batch_size {cfg.batch_size} is smaller than the {rt.world_size} processes; "
                          "the batch size is global (split across processes): raise it.")
    torch.manual_seed(seed + rt.rank)  # dropout differs per shard; weights start equal (DDP broadcasts rank 0's)
    model.to(rt.device)
    n = len(train)
    first_epoch = epoch_batches(train, cfg.batch_size, seed, 0, rt.world_size)
    steps_per_epoch = len(first_epoch)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    scaler = rt.grad_scaler()

    # Polyak/EMA weight averaging with torch's own AveragedModel (a copy of the model, updated after each step;
    # buffers follow the live model). It is what the model ends with, and what selection scores.
    averaged = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.weight_ema))
                if cfg.weight_ema is not None else None)
    scored = averaged.module if averaged is not None else model

    step = 0
    losses: list[float] = []
    if work_dir is not None:
        pos = load_checkpoint(work_dir, model, optimizer, scheduler, rt, averaged)
        if pos is not None:
            step = pos["step"]
            losses = pos.get("recent_losses", [])
            log(f"[yellow]{desc}: resuming from the checkpoint at step {step}/{total}[/]")

    selection = EpochSelection(select, patience, work_dir, writes=rt.is_main) if select is not None else None
    if selection is not None and step > 0:
        selection.resume()
        # killed between an epoch's checkpoint and its score: score it now, before training on
        if (step % steps_per_epoch == 0 or step >= total) and not selection.scored(step / steps_per_epoch):
            if selection.after_epoch(scored, step / steps_per_epoch):
                total = step
    interrupted = {"flag": False}

    def checkpoint(step: int, losses: list[float]) -> list[float]:
        """Save the resumable state at `step`; returns the recent losses it keeps (and the checkpoint holds)."""
        recent = losses[-LOSS_WINDOW:]
        save_checkpoint(work_dir, model, optimizer, scheduler, {"step": step, "recent_losses": recent}, rt, averaged)
        return recent

    def _on_sigint(signum, frame):  # finish the current step, checkpoint, then stop
        interrupted["flag"] = True

    previous_handler = signal.signal(signal.SIGINT, _on_sigint) if _main_thread() else None
    module = rt.wrap(model)
    module.train()
    examples = 0
    start_step, started = step, time.perf_counter()
    try:
        with progress(total - step, desc) as advance:
            while step < total:
                epoch, offset = divmod(step, steps_per_epoch)
                for global_idx in epoch_batches(train, cfg.batch_size, seed, epoch, rt.world_size)[offset:]:
                    if step >= total:
                        break
                    idx = rt.shard(global_idx)
                    batch = to_device(train.batch(idx), rt.device)
                    labels = torch.from_numpy(train.labels[idx]).to(rt.device)
                    if on_step is not None:
                        on_step(step / total)
                    with rt.autocast():
                        loss = loss_fn(module, batch, idx, labels).float()
                    if rt.any(not bool(torch.isfinite(loss))):
                        raise TrainingFault(
                            f"{desc}: the loss became {loss.item()} at step {step + 1}. Likely cause: a learning rate "
                            f"too high (lr={cfg.lr}) or bad inputs; lower the lr. The last good checkpoint is kept"
                            f"{' in ' + str(work_dir) if work_dir else ''}."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    if scaler is not None:  # fp16: an overflowing step is skipped and the scale lowered
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        if not torch.isfinite(grad_norm):
                            raise TrainingFault(
                                f"{desc}: gradients exploded (norm {grad_norm.item()}) at step {step + 1}. Lower the "
                                f"learning rate (lr={cfg.lr}); the last good checkpoint is kept."
                            )
                        optimizer.step()
                    scheduler.step()
                    if averaged is not None:
                        averaged.update_parameters(model)
                    step += 1
                    examples += len(global_idx)
                    losses.append(loss.item())
                    advance(1, loss=float(np.mean(losses[-20:])))
                    saved = work_dir is not None and (step % cfg.checkpoint_every == 0 or interrupted["flag"])
                    if saved:
                        losses = checkpoint(step, losses)
                    if selection is not None and (step % steps_per_epoch == 0 or step == total):
                        module.eval()
                        stop = selection.after_epoch(scored, step / steps_per_epoch)
                        module.train()
                        if stop:
                            log(f"[yellow]{desc}: no better dev score for {patience} epoch(s): stopping early at "
                                f"step {step}/{total}[/]")
                            total = step
                    if interrupted["flag"]:
                        if work_dir is not None and not saved:  # Ctrl-C came during the epoch's dev scoring
                            losses = checkpoint(step, losses)
                        raise Interrupted(
                            f"{desc}: interrupted at step {step}/{total}; a checkpoint was saved"
                            f"{' in ' + str(work_dir) if work_dir else ''}. Run the same command again to resume."
                        )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    wall = time.perf_counter() - started
    model.eval()
    if selection is not None:
        selection.restore_best(scored)
    if averaged is not None:  # same structure, buffers already in sync: the average becomes the model
        model.load_state_dict(averaged.module.state_dict())
    out = {"steps": total, "final_loss": float(np.mean(losses[-LOSS_WINDOW:])) if losses else None,
           "examples": n, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
           "steps_this_run": step - start_step, "wall_s": round(wall, 3),
           "examples_per_s": round(examples / wall, 2) if wall > 0 and examples else None,
           **rt.describe()}
    share = padding_share(train, first_epoch, rt)
    if share is not None:
        out["padding_share"] = share
    if selection is not None:
        out["selection"] = selection.report()
    if averaged is not None:
        out["weight_ema"] = cfg.weight_ema
    return out


def padding_share(train: Encoded, batches: list[np.ndarray], rt: Runtime) -> float | None:
    """Share of pad tokens in this process's shards of an epoch's batches (None for images).

    Computed from the batches, not counted while training, so a resumed run reports the same figure.
    """
    lengths = train.lengths
    if lengths is None:
        return None
    real = padded = 0
    for b in batches:
        shard = lengths[rt.shard(b)]
        real += int(shard.sum())
        padded += int(shard.max()) * len(shard)
    return round(1 - real / padded, 4) if padded else None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
