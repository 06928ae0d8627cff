"""Do forked measurements agree with measurements in a new interpreter? The same models, both paths, alternating.

    python -m benchmarks.latency_fork runs/bench-mpnet-cpu          # about half a minute on a 2-core Zen 5
    python -m benchmarks.latency_fork runs/sst2-minilm --rounds 16

Models: the run's INT8 export (model.onnx of its export stage) and its FP32 twin, at seq 128, 1 thread, batch 1.
Each round measures every model once forked from the measuring parent and once in a new interpreter
(`EDGEKD_LATENCY_FORK=0`), the order of the two paths swapped every round. Per path: the lowest and the median
round p50, the median session creation, the peak memory. Results: benchmarks/results/latency-fork.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from .latency_repeatability import export_models
from .machine import commit, host_facts, versions

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "latency-fork.json"
WARMUP, RUNS = 5, 100


def main(run_dir: str, rounds: int = 16) -> None:
    from edgekd.devices.latency import measure_latency

    models, feeds = export_models(run_dir)  # the INT8 export and its FP32 twin, as latency_repeatability times them
    got: dict = {m: {"fork": [], "new-interpreter": []} for m in models}
    for r in range(rounds):
        for path in (("fork", "new-interpreter") if r % 2 == 0 else ("new-interpreter", "fork")):
            os.environ["EDGEKD_LATENCY_FORK"] = "1" if path == "fork" else "0"
            for m, p in models.items():
                got[m][path].append(measure_latency(p, feeds[m], 1, warmup=WARMUP, runs=RUNS))
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
    summary = {m: {path: {"p50_lowest_ms": min(s["p50"] for s in stats),
                          "p50_median_ms": float(np.median([s["p50"] for s in stats])),
                          "session_create_median_ms": float(np.median([s["session_create_ms"] for s in stats])),
                          "peak_memory_median_mb": float(np.median([s["peak_memory_mb"] for s in stats]))}
                   for path, stats in paths.items()} for m, paths in got.items()}
    for m, paths in summary.items():
        f, n = paths["fork"], paths["new-interpreter"]
        print(f"{m}: p50 lowest {f['p50_lowest_ms']:.3f} forked vs {n['p50_lowest_ms']:.3f} ms new, median "
              f"{f['p50_median_ms']:.3f} vs {n['p50_median_ms']:.3f}; session {f['session_create_median_ms']:.1f} vs "
              f"{n['session_create_median_ms']:.1f} ms; peak memory {f['peak_memory_median_mb']:.2f} vs "
              f"{n['peak_memory_median_mb']:.2f} MB")
    RESULT.write_text(json.dumps({"run": str(run_dir), "rounds": rounds, "warmup": WARMUP, "runs": RUNS,
                                  "case": "batch 1, seq 128, 1 thread", "summary": summary,
                                  "machine": host_facts(), "versions": versions(), "commit": commit()}, indent=2) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=16)
    args = ap.parse_args()
    main(args.run_dir, args.rounds)
