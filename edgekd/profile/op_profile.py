"""Per-operator latency of an ONNX model, measured with onnxruntime's built-in profiler.

onnxruntime writes a Chrome-trace JSON with one "Node" event per executed kernel; summing their
durations by op type (after its graph fusions: e.g. QLinearConv, MatMulIntegerToFloat, FusedConv)
shows where the time goes on the device that is actually present.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def op_breakdown(onnx_path: str | Path, feed: dict[str, np.ndarray], threads: int = 1, runs: int = 20) -> dict:
    """{op_type: mean ms per inference}, sorted by time, plus '_total' (sum of kernel times)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekd-opprof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        for _ in range(3):  # warm-up runs are in the trace too; they are excluded by run count below
            sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + ev["dur"] / 1000.0  # µs -> ms
    n = 3 + runs
    per_run = {op: t / n for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}
    per_run["_total"] = sum(per_run.values())
    return per_run
