"""Measure one ONNX model on a measured device profile: accuracy, agreement, latency, memory, size.

Shared by the `profile` stage and `edgekd profile MODEL.onnx`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.batching import Encoded
from ..devices.runtime import onnx_logits
from ..progress import log, progress
from ..devices.feeds import image_feeds, model_input_dims, text_feeds
from ..devices.latency import combine_rounds, measure_latency
from ..devices.profiles import DeviceProfile

# Texts used for fixed-length timing: real sentences padded to the profile's length (content does
# not change the cost of a dense transformer, but real ids keep embedding-gather behaviour honest).
FIXED_FEEDS = 32


def scored_logits(path: Path, data: Encoded, teacher_pred: np.ndarray | None, desc: str) -> tuple[dict, np.ndarray]:
    """Accuracy (and agreement with the teacher's predictions) of an ONNX model, and its logits."""
    logits = onnx_logits(path, data, desc=desc)
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == data.labels).mean()), "examples": len(data)}
    if teacher_pred is not None:
        out["agreement"] = float((pred == teacher_pred).mean())
    return out, logits


def accuracy_on(path: Path, data: Encoded, teacher_pred: np.ndarray | None, desc: str) -> tuple[dict, np.ndarray]:
    out, logits = scored_logits(path, data, teacher_pred, desc)
    return out, logits.argmax(-1)


def usable_seq_lens(profile: DeviceProfile, max_positions: int | None) -> list[int]:
    """The profile's sequence lengths the model can take (longer ones exceed its position table)."""
    seq_lens = [s for s in profile.seq_lens if max_positions is None or s <= max_positions]
    if len(seq_lens) < len(profile.seq_lens):
        log(f"[yellow]profile {profile.name}: sequence lengths {sorted(set(profile.seq_lens) - set(seq_lens))} "
            f"exceed the model's {max_positions} positions and are skipped[/]")
    return seq_lens


def _batch_feed(feeds: list[dict[str, np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    """One feed of `batch` items stacked from batch-1 feeds (cycled if there are fewer)."""
    rows = [feeds[i % len(feeds)] for i in range(batch)]
    return {name: np.concatenate([r[name] for r in rows], axis=0) for name in rows[0]}


def _cases(path: Path, data: Encoded, profile: DeviceProfile, natural: bool, natural_max: int,
           seq_lens: list[int]) -> tuple[dict, dict]:
    """Latency cases {case: (feeds, threads, batch 1)} and throughput cases {case: (feed, threads, batch)}."""
    dims = model_input_dims(path)
    names = list(dims)
    latency: dict[str, tuple] = {}
    for threads in profile.threads:
        if data.images is not None:
            latency[f"t{threads}"] = (image_feeds(data.images[:FIXED_FEEDS], names[0]), threads)
            continue
        for seq in seq_lens:
            latency[f"seq{seq}_t{threads}"] = (text_feeds(data.ids[:FIXED_FEEDS], names, seq, data.pad_id), threads)
    if natural and data.ids is not None:
        latency["natural_t1"] = (text_feeds(data.ids[:natural_max], names, None, data.pad_id), 1)
    # Throughput: whole batches with every thread the profile allows, at its first sequence length;
    # not for a static batch-1 export (a device build), which can only take one item at a time.
    batch_cases: dict[str, tuple] = {}
    threads = max(profile.threads)
    fixed_batch = bool(dims[names[0]]) and dims[names[0]][0] is not None
    for b in (b for b in profile.batch_sizes if b > 1 and not fixed_batch):
        if data.images is not None:
            batch_cases[f"b{b}_t{threads}"] = ([_batch_feed(image_feeds(data.images[:FIXED_FEEDS], names[0]), b)], threads, b)
        elif seq_lens:
            feeds = text_feeds(data.ids[:FIXED_FEEDS], names, seq_lens[0], data.pad_id)
            batch_cases[f"b{b}_seq{seq_lens[0]}_t{threads}"] = ([_batch_feed(feeds, b)], threads, b)
    return latency, batch_cases


def measure_models(paths: dict[str, Path], data: Encoded | dict[str, Encoded], profile: DeviceProfile, *,
                   warmup: int, runs: int, rounds: int, natural: bool, natural_max: int,
                   max_positions: int | None = None, desc: str = "timing") -> tuple[dict, dict]:
    """Latency ({model: {case: stats}}) and throughput ({model: {case: stats}}) of several models.

    data: the examples fed to every model, or {model: examples} where models take different encodings
    (a vocabulary of their own).

    Cases: seq{L}_t{T} (text), t{T} (images), natural_t1 (texts at their own length), and for each
    batch size > 1 in the profile b{B}_..._t{max threads} (items per second). Every case is measured
    in `rounds` rounds, each a fresh process; the rounds go over all models and cases in turn
    (alternating order), so a slow spell of the machine falls on every model alike rather than on
    one, and combine_rounds takes the quiet figure. Sequence lengths beyond the model's position
    table (max_positions) cannot run and are skipped.
    """
    seq_lens = usable_seq_lens(profile, max_positions)
    jobs = []  # (model, kind, case, feeds, threads, runs, batch)
    for name, path in paths.items():
        latency, batches = _cases(path, data[name] if isinstance(data, dict) else data, profile, natural,
                                  natural_max, seq_lens)
        for case, (feeds, threads) in latency.items():
            jobs.append((name, "latency", case, feeds, threads, len(feeds) if case == "natural_t1" else runs, 1))
        for case, (feeds, threads, b) in batches.items():
            jobs.append((name, "throughput", case, feeds, threads, max(5, runs // b), b))
    measured: dict[tuple, list] = {}
    with progress(rounds * len(jobs), f"{desc} on {profile.name}") as advance:
        for r in range(rounds):
            for job in (jobs if r % 2 == 0 else jobs[::-1]):
                name, kind, case, feeds, threads, n, _ = job
                stats = measure_latency(paths[name], feeds, threads, warmup, n)
                measured.setdefault((name, kind, case), []).append(stats)
                advance(round=f"{r + 1}/{rounds}")
    latency_out: dict[str, dict] = {name: {} for name in paths}
    throughput_out: dict[str, dict] = {name: {} for name in paths}
    for name, kind, case, _, _, _, batch in jobs:
        stats = combine_rounds(measured[(name, kind, case)])
        if kind == "latency":
            latency_out[name][case] = stats
        else:
            stats.pop("spread", None)
            throughput_out[name][case] = {"batch_size": batch, "items_per_s": batch / (stats["p50"] / 1000),
                                          "ms_per_batch": stats["p50"], **stats}
    return latency_out, throughput_out
