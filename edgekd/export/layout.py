"""Does INT8 pay on the host? The integer-kernel check and an INT8-vs-FP32 timing, before shipping.

Whether INT8 is faster than FP32 depends on the CPU (VNNI or not, AVX2 or AVX-512), the sequence
length and onnxruntime's fusions — users report INT8 models slower than their FP32 twin. So when
the first profile is measured (the host), the export proves what it ships: the optimised graph
onnxruntime runs must execute every quantized layer as an integer kernel, and the INT8 model must
be at least `export.int8_min_speedup` times faster than its own FP32 export at batch 1, 1 thread,
timed in fresh processes in alternating rounds (the profile stage's protocol, shorter). Where it
is not, the FP32 model ships and the manifest says why.
"""
from __future__ import annotations

from pathlib import Path

from ..data.batching import Encoded
from ..devices.feeds import encoded_feeds, model_input_names
from ..devices.kernels import integer_kernel_report
from ..devices.latency import combine_rounds, measure_latency

TIMING_FEEDS = 16
ROUNDS = 3
RUNS = 30


def int8_speedup(int8: Path, fp32: Path, feeds: list[dict], threads: int = 1) -> dict:
    """p50 of both models (the quietest of ROUNDS fresh-process rounds) and fp32 / int8."""
    rounds: dict[str, list] = {"int8": [], "fp32": []}
    for r in range(ROUNDS):  # alternating order: a slow spell of the machine falls on both alike
        for name, path in (("int8", int8), ("fp32", fp32))[:: 1 if r % 2 == 0 else -1]:
            rounds[name].append(measure_latency(path, feeds, threads, warmup=5, runs=RUNS))
    p50 = {name: combine_rounds(stats)["p50"] for name, stats in rounds.items()}
    return {"int8_p50_ms": p50["int8"], "fp32_p50_ms": p50["fp32"], "speedup": p50["fp32"] / p50["int8"],
            "threads": threads, "rounds": ROUNDS, "runs": RUNS}


def check_int8(out: Path, data: Encoded, seq_len: int, min_speedup: float) -> dict:
    """The integer-kernel report of out/model.onnx and its timing against out/model-fp32.onnx.

    INT8 pays when it is at least `min_speedup` times faster and every quantized layer runs as an
    integer kernel; `min_speedup` 0 ships INT8 whatever was measured.

    Writes out/model.optimized.onnx (the graph onnxruntime runs here). Returns
    {"integer_kernels": report, "timing": {...}, "int8_pays": bool, "reason": str}.
    """
    # real examples at the timed sequence length (images as they are)
    feeds = encoded_feeds(data, model_input_names(out / "model.onnx"), seq_len, limit=TIMING_FEEDS)
    kernels = integer_kernel_report(out / "model.onnx", out / "model.optimized.onnx", feeds[0])
    timing = int8_speedup(out / "model.onnx", out / "model-fp32.onnx", feeds)
    case = f"batch 1, {'sequence ' + str(seq_len) + ', ' if data.images is None else ''}1 thread"
    left = [f"{f['node']} ({f['op']})" for f in kernels["float_layers"] if f["quantized_weight"]]
    pays = min_speedup == 0 or (timing["speedup"] >= min_speedup and kernels["ok"])
    reason = (f"INT8 is {timing['speedup']:.2f}x its FP32 export on this host ({case}: {timing['int8_p50_ms']:.3g} "
              f"against {timing['fp32_p50_ms']:.3g} ms)")
    if left:  # onnxruntime dequantizes these weights on every inference and runs the layer in float
        reason += (f"; {len(left)} quantized layer(s) run as float kernels in onnxruntime's optimised graph: "
                   f"{', '.join(left[:4])}{' ...' if len(left) > 4 else ''}")
    if not pays:
        reason += (f"; below export.int8_min_speedup={min_speedup:g}" if timing["speedup"] < min_speedup else "")
        reason += ": the FP32 model ships"
    return {"integer_kernels": kernels, "timing": {**timing, "case": case}, "int8_pays": pays, "reason": reason}
