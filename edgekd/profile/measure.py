"""Measure one ONNX model on a measured device profile: accuracy, agreement, latency, memory, size.

Shared by the `profile` stage and `edgekd profile MODEL.onnx`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.batching import Encoded
from ..export.runtime import onnx_logits
from ..progress import log
from .latency import image_feeds, measure_latency, model_input_names, text_feeds
from .profiles import DeviceProfile

# Texts used for fixed-length timing: real sentences padded to the profile's length (content does
# not change the cost of a dense transformer, but real ids keep embedding-gather behaviour honest).
FIXED_FEEDS = 32


def accuracy_on(path: Path, data: Encoded, teacher_pred: np.ndarray | None, desc: str) -> tuple[dict, np.ndarray]:
    logits = onnx_logits(path, data, desc=desc)
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == data.labels).mean()), "examples": len(data)}
    if teacher_pred is not None:
        out["agreement"] = float((pred == teacher_pred).mean())
    return out, pred


def usable_seq_lens(profile: DeviceProfile, max_positions: int | None) -> list[int]:
    """The profile's sequence lengths the model can take (longer ones exceed its position table)."""
    seq_lens = [s for s in profile.seq_lens if max_positions is None or s <= max_positions]
    if len(seq_lens) < len(profile.seq_lens):
        log(f"[yellow]profile {profile.name}: sequence lengths {sorted(set(profile.seq_lens) - set(seq_lens))} "
            f"exceed the model's {max_positions} positions and are skipped[/]")
    return seq_lens


def latency_on(path: Path, data: Encoded, profile: DeviceProfile, *, warmup: int, runs: int,
               natural: bool, natural_max: int, max_positions: int | None = None) -> dict:
    """{case: stats}; case = seq{L}_t{T} (text), t{T} (images), natural_t1 (texts at their own length).

    Sequence lengths beyond the model's position table (max_positions) cannot run and are skipped.
    """
    names = model_input_names(path)
    out: dict[str, dict] = {}
    seq_lens = usable_seq_lens(profile, max_positions)
    for threads in profile.threads:
        if data.images is not None:
            out[f"t{threads}"] = measure_latency(path, image_feeds(data.images[:FIXED_FEEDS]), threads, warmup, runs)
            continue
        for seq in seq_lens:
            feeds = text_feeds(data.ids[:FIXED_FEEDS], names, seq, data.pad_id)
            out[f"seq{seq}_t{threads}"] = measure_latency(path, feeds, threads, warmup, runs)
    if natural and data.ids is not None:
        ids = data.ids[:natural_max]
        out["natural_t1"] = measure_latency(path, text_feeds(ids, names, None, data.pad_id), 1, warmup, len(ids))
    return out
