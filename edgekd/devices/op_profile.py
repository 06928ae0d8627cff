"""Per-operator latency of an ONNX model, measured with onnxruntime's built-in profiler.

onnxruntime writes a Chrome-trace JSON with one "Node" event per executed kernel; summing their
durations by op type (after its graph fusions: e.g. QLinearConv, MatMulIntegerToFloat, FusedConv)
shows where the time goes on the device that is actually present.

The profiler's own bookkeeping costs a few microseconds per kernel, which inflates small models:
for the quickstart CNN the kernel times summed to more than the unprofiled p50. So the result is
each op type's *share* of kernel time; `scale_breakdown` turns shares into milliseconds of a
latency measured without the profiler.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def op_breakdown(onnx_path: str | Path, feed: dict[str, np.ndarray], threads: int = 1, warmup: int = 3,
                 runs: int = 20) -> dict:
    """{"share": {op_type: fraction of kernel time}, "node_share": {node name: (op_type, fraction)},
    "kernel_ms": summed kernel ms per run, "run_ms": profiled wall ms per run} over the timed runs
    (warm-up runs are left out of the trace sums). Node names are those of the graph onnxruntime
    runs after its optimisations."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekd-opprof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    # each inference is one "model_run" event; kernels of the warm-up runs start before the first timed one
    timed = sorted((ev for ev in trace if ev.get("name") == "model_run"), key=lambda ev: ev["ts"])[-runs:]
    first = timed[0]["ts"] if len(timed) == runs else 0  # no run events (another onnxruntime): count them all
    totals: dict[str, float] = {}
    nodes: dict[str, list] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time") and ev.get("ts", 0) >= first:
            op = ev.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + ev["dur"] / 1000.0  # µs -> ms
            node = nodes.setdefault(ev["name"][: -len("_kernel_time")], [op, 0.0])
            node[1] += ev["dur"] / 1000.0
    kernel = sum(totals.values())
    share = {op: t / kernel for op, t in sorted(totals.items(), key=lambda kv: -kv[1])} if kernel > 0 else {}
    node_share = {n: (op, t / kernel) for n, (op, t) in sorted(nodes.items(), key=lambda kv: -kv[1][1])} if kernel > 0 else {}
    run_ms = float(np.mean([ev["dur"] for ev in timed]) / 1000.0) if timed else None
    return {"share": share, "node_share": node_share, "kernel_ms": kernel / (runs if first else warmup + runs), "run_ms": run_ms}


def scale_breakdown(breakdown: dict, total_ms: float) -> dict:
    """{op_type: ms} that add up to `total_ms` (a latency measured without the profiler), plus '_total'."""
    out = {op: s * total_ms for op, s in breakdown["share"].items()}
    out["_total"] = total_ms
    return out
