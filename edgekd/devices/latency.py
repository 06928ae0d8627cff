"""Latency, memory and throughput of an ONNX file, measured with onnxruntime in a fresh process.

Each measurement runs in a fresh child process so that its memory is the model's alone (not the
parent's torch, data and caches) and that sessions measured one after another cannot warm each
other's caches or thread pools. onnxruntime is imported in the child, never before.

Most of a fresh interpreter's cost is starting Python and importing numpy, not the measurement, and a
profile or a latency-budget pruning measures hundreds of times. On Linux a measuring parent started once
(`_MeasuringParent`) has them imported and forks the child of each measurement: the child is as fresh where
it matters (its own onnxruntime import, session, thread pool and peak memory), only its start is cheaper.
Elsewhere, or when that parent cannot start, every measurement starts a new interpreter.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
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
        forked = _MeasuringParent.measure(args, Path(tmp)) if _MeasuringParent.usable() else None
        if forked is not None:
            code, result, stderr = forked
        else:
            proc = subprocess.run([sys.executable, "-m", "edgekd.devices.latency", json.dumps(args)],
                                  capture_output=True, text=True)
            code, stderr = proc.returncode, proc.stderr
            result = proc.stdout.strip().splitlines()[-1] if code == 0 else ""
    if code != 0:
        raise RuntimeError(f"latency measurement failed in the child process (exit {code}):\n{stderr[-3000:]}")
    return json.loads(result)


def _child_run(args: dict) -> dict:
    """The measurement of one child process (a new interpreter or a forked one)."""
    if args.get("affinity"):  # before onnxruntime starts its thread pool, which inherits it
        os.sched_setaffinity(0, set(args["affinity"]))
    with np.load(args["feeds"], allow_pickle=False) as z:
        feeds: list[dict] = [{} for _ in range(args["n_feeds"])]
        for key in z.files:
            i, name = key.split("/", 1)
            feeds[int(i)][name] = z[key]
    return _measure(args["onnx_path"], feeds, args["threads"], args["warmup"], args["runs"], args["providers"])


def _child_main(raw: str) -> None:
    print(json.dumps(_child_run(json.loads(raw))))


class _MeasuringParent:
    """A process that has Python and numpy started and forks one measuring child per request (Linux only: fork
    is not offered on Windows, and on macOS frameworks loaded by the interpreter may not survive it).

    Written here rather than with multiprocessing's forkserver: that one imports the caller's __main__ again in
    the server (an unguarded user script would run twice) and sends its calls by pickle; this one reads one JSON
    line per request and answers with the child's exit status, the result and the child's output in files.
    The parent itself never imports onnxruntime, which starts a thread of its own at import: a forked child
    holds only the forking thread, so the runtime is imported in each child, as in a new interpreter.
    """

    _lock = threading.Lock()
    _current: "_MeasuringParent | None" = None

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.pid = os.getpid()
        # one OpenBLAS thread: numpy's OpenBLAS starts workers at import, and a single-threaded process forks plainly
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekd.devices.latency", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env={**self.env, "OPENBLAS_NUM_THREADS": "1"})

    @staticmethod
    def usable() -> bool:
        return sys.platform.startswith("linux") and os.environ.get("EDGEKD_LATENCY_FORK", "1") != "0"

    @classmethod
    def measure(cls, args: dict, tmp: Path) -> tuple[int, str, str] | None:
        """(exit status, result JSON, the child's output) of one measurement; None when no measuring parent
        answers (it could not start or died), and the caller starts a new interpreter instead."""
        with cls._lock:
            parent = cls._current
            # a forked copy of the caller must not share the pipes; a changed environment needs a new parent
            if parent is None or parent.pid != os.getpid() or parent.env != dict(os.environ) \
                    or parent.proc.poll() is not None:
                if parent is not None and parent.pid == os.getpid():
                    parent.close()
                parent = cls._current = cls()
            # the caller's working folder now, not the parent's at its start: a relative model path reads the same
            request = {**args, "cwd": os.getcwd(), "result": str(tmp / "result.json"), "output": str(tmp / "output.txt")}
            try:
                parent.proc.stdin.write(json.dumps(request) + "\n")
                parent.proc.stdin.flush()
                answer = parent.proc.stdout.readline()
            except OSError:
                answer = ""
            if not answer:
                parent.close()
                cls._current = None
                return None
        code = json.loads(answer)["status"]
        output = (tmp / "output.txt").read_text(errors="replace") if (tmp / "output.txt").is_file() else ""
        result = (tmp / "result.json").read_text() if code == 0 else ""
        return code, result, output

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the parent's loop ends at end of input
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def _close_measuring_parent() -> None:
    parent = _MeasuringParent._current
    if parent is not None and parent.pid == os.getpid():
        parent.close()


atexit.register(_close_measuring_parent)


def _serve() -> None:
    """The measuring parent's loop: a request line in, the forked child's exit status out."""
    import traceback

    for line in iter(sys.stdin.readline, ""):
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: nothing it prints may reach the parent's answers on stdout
            code = 1
            try:
                out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.chdir(request["cwd"])
                result = _child_run(request)
                Path(request["result"]).write_text(json.dumps(result))
                code = 0
            except BaseException:  # noqa: BLE001 — reported in the output file, the status says it failed
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


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
    _serve() if sys.argv[1] == "--serve" else _child_main(sys.argv[1])
