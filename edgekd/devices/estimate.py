"""Latency estimate of an ONNX model on a device that is not present: a cost model over the graph.

Graph costs (FLOPs, bytes, class per node) come from graph_costs.py.

Time model (per node, summed), class c, t threads, T = cores the peak figures cover:

    t_node = flops / (peak_c * eff_c * t**alpha_c / T) + bytes / (bandwidth * eff_mem)
             + overhead_ms * (1 + overhead_thread * (t - 1))

peak_c is the device's INT8 peak for int8 matmuls and its FP32 peak for the rest. The efficiencies,
thread exponents and per-node overheads are fitted on the host (`calibrate`, from measured
latencies) and shipped as package data (profiles/calibration/host-cpu.json, inside the wheel edgekd/profiles/calibration/);
estimating another device reuses them with that device's peak figures, bandwidth and threads.
Every result says `estimated: True`.

Host peak figures (`host_peaks`): peak_fp32 = cores * GHz * fp32 FLOPs/cycle/core, where GHz is
/proc/cpuinfo "cpu MHz" (assumed 2.5 GHz if absent) and FLOPs/cycle is 64 with AVX-512, 32 with
AVX2+FMA (two 256-bit FMA pipes), 16 with NEON, else 8; peak_int8 = peak_fp32 * 4 with VNNI/AMX
(VPDPBUSD: four 8-bit MACs per 32-bit lane), * 2 without (VPMADDUBSW + VPMADDWD take two steps).
Host bandwidth: a measured numpy streaming copy (read + write bytes / best time).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import EdgekdError, ProfileError
from .graph_costs import CLASSES, graph_costs, summarize
from .profile_folders import shipped_calibration
from .profiles import DeviceProfile, detect_host

# Package data (importlib.resources), so that an installed wheel carries the host calibration too.
DEFAULT_CALIBRATION = shipped_calibration()
DEFAULT_MHZ = 2500.0
FORMULA = ("ms = sum over nodes of flops / (peak_class * eff_class * min(t, T)**alpha_class / T) "
           "+ bytes / (bandwidth * eff_mem) + overhead_ms * (1 + overhead_thread * (t - 1)); "
           "t threads, T cores the peak covers, peak_class = INT8 peak for int8 matmuls, FP32 peak otherwise")


def _cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "cpu mhz":
                return float(value)
    except (OSError, ValueError):
        return None
    return None


def measure_bandwidth_gbs(mb: int = 128, repeats: int = 5) -> float:
    """Streaming copy bandwidth (bytes read + written per second, best of `repeats`)."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def host_peaks(host: dict | None = None, mhz: float | None = None, bandwidth_gbs: float | None = None) -> dict:
    """The host's peak figures from detect_host() and the clock (formula in the module docstring)."""
    host = host or detect_host()
    isa = host["isa"]
    clock = mhz or _cpu_mhz()
    clock_source = "/proc/cpuinfo cpu MHz" if clock else f"assumed {DEFAULT_MHZ:.0f} MHz"
    clock = clock or DEFAULT_MHZ
    per_cycle = 64 if isa.get("avx512") else 32 if isa.get("avx2") else 16 if isa.get("neon") else 8
    int8_factor = 4 if (isa.get("vnni") or isa.get("amx")) else 2
    cores = int(host.get("cores") or 1)
    fp32 = cores * clock / 1000 * per_cycle
    return {"peak_fp32_gflops": fp32, "peak_int8_gops": fp32 * int8_factor,
            "memory_bandwidth_gbs": bandwidth_gbs if bandwidth_gbs is not None else measure_bandwidth_gbs(),
            "cores": cores, "mhz": clock, "clock_source": clock_source, "fp32_flops_per_cycle": per_cycle,
            "int8_factor": int8_factor,
            "formula": "peak_fp32 = cores * MHz/1000 * fp32_flops_per_cycle; peak_int8 = peak_fp32 * int8_factor"}


def device_figures(profile: DeviceProfile, calibration: dict) -> dict:
    """Peaks, bandwidth and the core count they cover. A measured profile without figures is the host."""
    host = calibration["host"]
    if profile.peak_fp32_gflops is None and profile.peak_int8_gops is None:
        if not profile.measured:
            raise ProfileError(f"profile {profile.name!r} has no peak figures to estimate from")
        return {k: host[k] for k in ("peak_fp32_gflops", "peak_int8_gops", "memory_bandwidth_gbs", "cores")}
    # A device that only quotes one peak: an NPU quoting INT8 runs float at a quarter of it (at best);
    # a CPU quoting FP32 only gets no integer speed-up.
    fp32 = profile.peak_fp32_gflops or profile.peak_int8_gops / 4
    int8 = profile.peak_int8_gops or fp32
    bw = profile.memory_bandwidth_gbs or host["memory_bandwidth_gbs"]
    # The peak is spread over the cores it was quoted for (compute_units): one thread of a 40-core
    # server gets 1/40 of the socket's peak, not 1/max(threads). null = one accelerator.
    cores = profile.compute_units or (1 if profile.execution_provider != "CPUExecutionProvider" else max(profile.threads))
    return {"peak_fp32_gflops": fp32, "peak_int8_gops": int8, "memory_bandwidth_gbs": bw, "cores": cores}


# ------------------------------------------------------------------ time model
def _features(summary: dict, fig: dict, threads: int, alphas: dict) -> np.ndarray:
    """Time in ms = features . [1/eff_int8, 1/eff_fp32, 1/eff_other, 1/eff_mem, overhead, overhead*thread]."""
    t = min(threads, fig["cores"])
    peak = {"int8_matmul": fig["peak_int8_gops"], "fp32_matmul": fig["peak_fp32_gflops"], "other": fig["peak_fp32_gflops"]}
    compute = [summary[c]["flops"] / (peak[c] * 1e9 * t ** alphas[c] / fig["cores"]) * 1e3 for c in CLASSES]
    nbytes = sum(summary[c]["bytes"] for c in CLASSES)
    nodes = sum(summary[c]["nodes"] for c in CLASSES)
    return np.array(compute + [nbytes / (fig["memory_bandwidth_gbs"] * 1e9) * 1e3, nodes, nodes * (threads - 1)])


def _inverse(eff: float | None) -> float:
    return 0.0 if eff is None else 1.0 / eff  # None: the class's time is all in the memory and per-node terms


def _weights(params: dict) -> np.ndarray:
    return np.array([_inverse(params["eff"][c]) for c in CLASSES] + [
        _inverse(params["eff_mem"]), params["overhead_ms"], params["overhead_ms"] * params["overhead_thread"]])


def estimate_latency(onnx_path: str | Path, profile: DeviceProfile, seq_len: int | None, threads: int,
                     calibration: dict | None = None) -> dict:
    """Estimated ms per inference (batch 1) of `onnx_path` on `profile` with `threads` threads."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cal = calibration if calibration is not None else load_calibration()
    p = cal["params"]
    seq = seq_len if seq_len is not None else profile.seq_lens[0]
    costs = graph_costs(onnx_path, seq)
    fig = device_figures(profile, cal)
    w = _weights(p)
    per_op: dict[str, float] = {}
    total = 0.0
    for c in costs:
        s = {k: {"flops": 0.0, "bytes": 0.0, "nodes": 0} for k in CLASSES}
        s[c.cls] = {"flops": c.flops, "bytes": c.bytes, "nodes": 1}
        ms = float(_features(s, fig, threads, p["alpha"]) @ w)
        key = c.op_type + (" (int8)" if c.cls == "int8_matmul" else "")
        per_op[key] = per_op.get(key, 0.0) + ms
        total += ms
    return {"ms": total, "estimated": True, "per_op_type": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
            "profile": profile.name, "seq_len": seq, "threads": threads}


# ------------------------------------------------------------------ calibration
def calibrate(cases: list[dict], host: dict | None = None) -> dict:
    """Fit efficiencies, thread exponents and per-node overheads to measured latencies.

    cases: dicts with onnx_path, seq_len, threads, measured_ms. Minimises the squared *relative*
    error (each case weighted by 1/measured) with non-negative inverse efficiencies, by NNLS at
    each point of a grid over the thread exponents.
    """
    if len(cases) < 6:
        raise EdgekdError(f"calibration needs at least 6 measured cases, got {len(cases)}")
    from scipy.optimize import nnls  # imported here: it takes half a second, and estimates never need it

    host = host or host_peaks()
    fig = {k: host[k] for k in ("peak_fp32_gflops", "peak_int8_gops", "memory_bandwidth_gbs", "cores")}
    summaries = [summarize(graph_costs(c["onnx_path"], c["seq_len"])) for c in cases]
    y = np.array([c["measured_ms"] for c in cases], dtype=float)
    grid = np.round(np.arange(0.0, 1.0001, 0.1), 2)
    best = None
    for a_int8 in grid:
        for a_fp32 in grid:
            for a_other in grid:
                alphas = {"int8_matmul": a_int8, "fp32_matmul": a_fp32, "other": a_other}
                x_mat = np.stack([_features(s, fig, c["threads"], alphas) for s, c in zip(summaries, cases)])
                w, _ = nnls(x_mat / y[:, None], np.ones(len(y)))
                rel = x_mat @ w / y - 1
                score = float(np.mean(rel**2))
                if best is None or score < best[0]:
                    best = (score, alphas, w, rel)
    _, alphas, w, rel = best
    # A zero inverse efficiency means the data gave that term no time: stored as None (no cost).
    eff = [float(1 / v) if v > 1e-9 else None for v in w[:4]]
    params = {"eff": dict(zip(CLASSES, eff[:3])), "eff_mem": eff[3],
              "overhead_ms": float(w[4]), "overhead_thread": float(w[5] / w[4]) if w[4] > 0 else 0.0,
              "alpha": {k: float(v) for k, v in alphas.items()}}
    return {"version": 1, "formula": FORMULA,
            "host": {k: host[k] for k in host}, "params": params,
            "fit": {"cases": len(cases), "max_abs_rel_error": float(np.max(np.abs(rel))),
                    "mean_abs_rel_error": float(np.mean(np.abs(rel)))}}


def estimator_error(cal: dict) -> float | None:
    """The estimator's worst relative error on the host: over every measured host case (held-out models and lengths
    included) when the calibration has them, else over the cases it was fitted on."""
    return cal.get("measured_error", cal.get("fit", {})).get("max_abs_rel_error")


def calibration_path() -> Path:
    # The shipped calibration is a real file wherever edgekd is installed unzipped (pip never zips).
    env = os.environ.get("EDGEKD_CALIBRATION")
    return Path(env) if env else Path(str(DEFAULT_CALIBRATION))


def load_calibration(path: str | Path | None = None) -> dict:
    p = Path(path) if path is not None else calibration_path()
    if not p.is_file():
        raise ProfileError(
            f"No latency-estimator calibration at {str(p)!r}: estimates need efficiencies fitted on the host. "
            "Run `python -m benchmarks.estimator_host` from a checkout on the host to measure and write it, or set EDGEKD_CALIBRATION.")
    try:
        cal = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileError(f"Calibration file {str(p)!r} cannot be read ({e}); rerun python -m benchmarks.estimator_host.") from None
    if not isinstance(cal, dict) or "params" not in cal or "host" not in cal:
        raise ProfileError(f"Calibration file {str(p)!r} lacks 'params' or 'host'; rerun python -m benchmarks.estimator_host.")
    return cal


def save_calibration(cal: dict, path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else calibration_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cal, indent=2) + "\n", encoding="utf-8")
    return p
