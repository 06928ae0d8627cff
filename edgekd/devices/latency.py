"""Latency, memory and throughput of an ONNX file, measured with onnxruntime in a fresh process.

Each measurement runs in a fresh child process so that its memory is the model's alone (not the
parent's torch, data and caches) and that sessions measured one after another cannot warm each
other's caches or thread pools. Only light modules are imported at top level so spawning is fast;
onnxruntime is imported in the child.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import ModelError


def _peak_rss_kb() -> float:
    """Peak resident memory of this process, in KB.

    On Linux VmHWM, not ru_maxrss: a spawned child's ru_maxrss starts at the *parent's* peak
    (the kernel folds the pre-exec memory into it), so a parent holding 800 MB made a child
    report 813 MB while it used 14 MB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else float(peak)  # macOS reports bytes


def _reset_peak_rss() -> None:
    # Linux: "5" resets VmHWM to the current RSS, so the import's transient peak is not counted.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def _measure(onnx_path: str, feeds: list[dict], threads: int, warmup: int, runs: int, providers: list[str]) -> dict:
    """Runs in the child process."""
    import onnxruntime as ort
    import psutil

    # Baseline after importing onnxruntime: the runtime library is the same for every model,
    # so peak_memory_mb is what this model's session and inferences add.
    _reset_peak_rss()
    baseline_kb = psutil.Process().memory_info().rss / 1024

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    session = ort.InferenceSession(onnx_path, sess_options=options, providers=providers)
    session_create_ms = (time.perf_counter() - start) * 1000

    times = timed_runs(lambda feed: session.run(None, feed), feeds, warmup, runs)
    return {**timing_stats(times, threads), "session_create_ms": session_create_ms,
            "peak_memory_mb": max(0.0, _peak_rss_kb() - baseline_kb) / 1024, "baseline_rss_mb": baseline_kb / 1024}


def timed_runs(run, feeds: list, warmup: int, runs: int) -> np.ndarray:
    """Milliseconds of `run(feed)` for `runs` timed calls after `warmup` untimed ones; call i takes feeds[i % n]."""
    for i in range(warmup):
        run(feeds[i % len(feeds)])
    times = np.empty(runs)
    for i in range(runs):
        feed = feeds[i % len(feeds)]
        start = time.perf_counter()
        run(feed)
        times[i] = time.perf_counter() - start
    return times * 1000


def timing_stats(times: np.ndarray, threads: int) -> dict:
    """The figures of one measurement (one round) that combine_rounds pools."""
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(times.mean()), "std": float(times.std()),
            "runs": len(times), "threads": threads, "spread": (p90 - p50) / p50 if p50 > 0 else 0.0,
            "times_ms": [round(float(v), 4) for v in times]}  # pooled over rounds by combine_rounds


def _run_in_child(onnx_path: str, feeds: list[dict], threads: int, warmup: int, runs: int,
                  providers: list[str], affinity: list[int] | None = None) -> dict:
    """Run `_measure` in a fresh interpreter (`python -m edgekd.devices.latency`).

    A plain subprocess rather than multiprocessing: spawn re-imports the caller's __main__ (an
    unguarded user script would run again) and sends arguments by pickle. Feeds travel as an
    .npz (loaded with allow_pickle=False), the result comes back as JSON on stdout.
    """
    with tempfile.TemporaryDirectory(prefix="edgekd-latency-") as tmp:
        arrays = {f"{i}/{name}": np.ascontiguousarray(v) for i, feed in enumerate(feeds) for name, v in feed.items()}
        np.savez(Path(tmp) / "feeds.npz", **arrays)
        args = {"onnx_path": onnx_path, "feeds": str(Path(tmp) / "feeds.npz"), "n_feeds": len(feeds),
                "threads": threads, "warmup": warmup, "runs": runs, "providers": providers,
                "affinity": affinity}
        proc = subprocess.run([sys.executable, "-m", "edgekd.devices.latency", json.dumps(args)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"latency measurement failed in the child process (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main(raw: str) -> None:
    args = json.loads(raw)
    if args.get("affinity"):  # before onnxruntime starts its thread pool, which inherits it
        import os

        os.sched_setaffinity(0, set(args["affinity"]))
    with np.load(args["feeds"], allow_pickle=False) as z:
        feeds: list[dict] = [{} for _ in range(args["n_feeds"])]
        for key in z.files:
            i, name = key.split("/", 1)
            feeds[int(i)][name] = z[key]
    result = _measure(args["onnx_path"], feeds, args["threads"], args["warmup"], args["runs"], args["providers"])
    print(json.dumps(result))


def measure_latency(
    onnx_path: str | Path,
    feeds: list[dict[str, np.ndarray]],
    threads: int,
    warmup: int = 10,
    runs: int = 100,
    providers: list[str] | None = None,
    affinity: list[int] | None = None,
) -> dict:
    """Milliseconds per inference (p50/p90/p99/mean/std), session creation time and peak memory.

    Timed run i uses feeds[i % len(feeds)]; warm-up runs are not counted. `affinity`: CPU ids the
    measuring process (and its threads) may run on (Linux); None leaves scheduling to the OS, which
    measured steadier than pinning on the 2-vCPU reference VM (benchmarks/latency_repeatability.py).
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX file {str(path)!r} does not exist; export the model first.")
    if not feeds:
        raise ValueError("measure_latency needs at least one feed")
    if threads < 1 or runs < 1 or warmup < 0:
        raise ValueError(f"need threads >= 1, runs >= 1, warmup >= 0; got {threads}, {runs}, {warmup}")
    return _run_in_child(str(path), list(feeds), threads, warmup, runs, list(providers or ["CPUExecutionProvider"]),
                         affinity)


def combine_rounds(rounds: list[dict]) -> dict:
    """One figure from several rounds of the same case, each measured in its own process at another time.

    On a shared machine other tenants' load comes and goes over seconds: measured on the 2-vCPU
    reference VM, the same session flips between ~6.2 and ~8.2 ms per inference (seq 128, 1 thread),
    and pinning threads to cores did not narrow it (benchmarks/results/latency-repeatability.json).
    Interference only ever slows a run down, so the quiet-machine latency is the *lowest* round
    median: `p50`. The tails (p90, p99) and the mean are over every timed run of every round, so
    they keep the interference a user's machine may also see. `round_spread` (median round p50 /
    lowest - 1) says how noisy the machine was while measuring.
    """
    if not rounds:
        raise ValueError("combine_rounds needs at least one round")
    p50s = [r["p50"] for r in rounds]
    times = np.concatenate([np.asarray(r.get("times_ms") or [r["p50"]], dtype=float) for r in rounds])
    p90, p99 = (float(v) for v in np.percentile(times, [90, 99]))
    best = min(p50s)
    return {
        "p50": best, "p90": max(p90, best), "p99": max(p99, best), "mean": float(times.mean()), "std": float(times.std()),
        "runs": int(times.size), "rounds": len(rounds), "round_p50s": [round(v, 4) for v in p50s],
        "round_spread": float(np.median(p50s)) / best - 1 if best > 0 else 0.0,
        "spread": (p90 - best) / best if best > 0 else 0.0, "threads": rounds[0]["threads"],
        "session_create_ms": float(np.median([r["session_create_ms"] for r in rounds])),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rounds),
    }


if __name__ == "__main__":
    _child_main(sys.argv[1])
