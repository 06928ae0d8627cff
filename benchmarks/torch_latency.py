"""Latency of torch's dynamic INT8 teacher in a fresh process (the PyTorch side of edgekd's round protocol).

    python -m benchmarks.torch_latency '{"artifact": ..., "feeds": "x.npz", "n_feeds": 32, "threads": 1, ...}'

The teacher is rebuilt from its artifact (safetensors) and quantized in this process — a quantized torch model
cannot be stored without pickle — then timed with edgekd.devices.latency's own loop and figures, and the result
is printed as JSON on the last line.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(raw: str) -> None:
    args = json.loads(raw)
    import psutil
    import torch

    torch.set_num_threads(args["threads"])
    from edgekd import load_model
    from edgekd.devices.latency import _peak_rss_kb, _reset_peak_rss, timed_runs, timing_stats

    from .peers import torch_dynamic_int8

    _reset_peak_rss()
    baseline_kb = psutil.Process().memory_info().rss / 1024
    start = time.perf_counter()
    model = torch_dynamic_int8(load_model(args["artifact"]))
    create_ms = (time.perf_counter() - start) * 1000
    with np.load(args["feeds"], allow_pickle=False) as z:
        feeds = [{name: torch.from_numpy(z[f"{i}/{name}"]) for name in args["names"]} for i in range(args["n_feeds"])]
    with torch.inference_mode():
        times = timed_runs(lambda feed: model(**feed), feeds, args["warmup"], args["runs"])
    print(json.dumps({**timing_stats(times, args["threads"]), "session_create_ms": create_ms,
                      "peak_memory_mb": max(0.0, _peak_rss_kb() - baseline_kb) / 1024}))

if __name__ == "__main__":
    main(sys.argv[1])
