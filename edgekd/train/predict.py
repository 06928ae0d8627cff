"""Prediction with the training engine's device and processes: logits for every example, in order."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import Encoded
from ..models.hf import logits_of
from ..progress import progress
from .loop import to_device
from .runtime import Runtime


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int = 64, desc: str | None = None,
                   runtime: Runtime | None = None) -> np.ndarray:
    """Logits for every example, in order. Texts are batched by length (less padding), then un-sorted.

    In a distributed run each process predicts every world_size-th batch and the rows are gathered,
    so every process returns the whole array and each example is computed once.
    """
    rt = runtime or Runtime.cpu()
    model.to(rt.device).eval()
    n = len(data)
    lengths = data.lengths
    order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
    chunks = [order[i: i + batch_size] for i in range(0, n, batch_size)][rt.rank::rt.world_size]
    mine, rows = [], []
    with progress(len(chunks), desc or "predict") as advance:
        for idx in chunks:
            with rt.autocast():
                logits = logits_of(model, to_device(data.batch(idx), rt.device))
            mine.append(idx)
            rows.append(logits.float().cpu().numpy())
            advance()
    width = rows[0].shape[1] if rows else _num_outputs(model)
    idx = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    rows_arr = np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)
    return rt.gather_rows(idx, rows_arr, n).astype(np.float32)


def _num_outputs(model: torch.nn.Module) -> int:
    """Classes of a model that got no batch to predict (more processes than batches)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "num_labels", None):
        return int(config.num_labels)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    return int(last.out_features)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())
