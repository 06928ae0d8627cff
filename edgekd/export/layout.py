"""Does INT8 pay on the host? The integer-kernel check and an INT8-vs-FP32 timing, before shipping.

Whether INT8 is faster than FP32 depends on the CPU (VNNI or not, AVX2 or AVX-512), the sequence
length and onnxruntime's fusions — users report INT8 models slower than their FP32 twin. So when
the first profile is measured (the host), the export proves what it ships: the optimised graph
onnxruntime runs must execute every quantized layer as an integer kernel, and the INT8 model must
be at least `export.int8_min_speedup` times faster than its own FP32 export at batch 1, 1 thread,
timed in fresh processes in alternating rounds (the profile stage's protocol, shorter). Where it
is not, the FP32 model ships and the manifest says why.

The INT8 layout is chosen the same way, by measurement: the QAT model's QDQ graph (static activation ranges
trained in QAT), onnxruntime's own optimised graph of it with the Linear biases folded into the integer MatMuls
(host_graph.py: the same arithmetic, fewer passes over memory, onnxruntime only) and onnxruntime's dynamic INT8
of its float twin (activations quantized at run time), timed in the same rounds; which is faster depends on the
CPU's integer instructions and on what onnxruntime fuses.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..data.batching import Encoded
from ..devices.feeds import encoded_feeds, model_input_names
from ..devices.kernels import integer_kernel_report
from ..devices.latency import combine_rounds, measure_latency
from ..devices.runtime import dynamic_int8
from .host_graph import fused_host_graph

TIMING_FEEDS = 16
ROUNDS = 3
RUNS = 30


# Another INT8 layout displaces the QAT model's QDQ graph only when it is at least this much faster: QDQ is what
# QAT trained and validated, and a smaller gap is within the run-to-run spread of this protocol.
LAYOUT_MARGIN = 1.05
# ... except onnxruntime's fused graph of QDQ itself: the same kernels and arithmetic (bit-identical logits) with
# one pass over memory fewer per folded bias, so it cannot be slower but by noise — it replaces QDQ unless measured
# slower by more than the margin (3 rounds here could not resolve its ~5-8% gain: quick benchmark's model, 7
# rounds, 1.05x by the quietest round and 1.10x by the median one; 3 rounds in the export measured it 0.89x)
_REPLACES_QDQ_AT = {"fused": 1 / LAYOUT_MARGIN}


def time_models(models: dict[str, Path], feeds: list[dict], threads: int = 1, rounds_n: int = ROUNDS
                ) -> dict[str, float]:
    """p50 of each model: the quietest of `rounds_n` fresh-process rounds, the order rotated every round so that a
    slow spell of the machine falls on all of them alike."""
    rounds: dict[str, list] = {name: [] for name in models}
    names = list(models)
    for r in range(rounds_n):
        for name in names[r % len(names):] + names[: r % len(names)]:
            rounds[name].append(measure_latency(models[name], feeds, threads, warmup=5, runs=RUNS))
    return {name: combine_rounds(stats)["p50"] for name, stats in rounds.items()}


def _ineligible(facts: dict) -> str:
    """Why a measured layout may not ship ("" when it may)."""
    if not facts["integer_kernels_ok"]:
        return " (not eligible: float kernels)"
    return " (not eligible: validation failed)" if facts.get("validation_failures") else ""


def check_int8(out: Path, data: Encoded, seq_len: int, min_speedup: float,
               dynamic: Callable[[Path], dict] | None = None, reduce_range: bool = False,
               fused: Callable[[Path], dict] | None = None) -> dict:
    """Which INT8 layout of out/model.onnx (QAT, QDQ) ships on this host, if any: the integer-kernel report of
    each candidate and their timing against out/model-fp32.onnx in the same rounds.

    dynamic: validates a candidate path against PyTorch (export validation: {"failures": [...], ...}); given, the
    dynamic INT8 layout is built (out/model-int8-dynamic.onnx) and is a candidate when every quantized layer runs
    as an integer kernel and it validates; it is chosen over QDQ only when LAYOUT_MARGIN times faster.
    fused: validates a candidate path against the QAT model; given, onnxruntime's optimised graph of the QDQ model
    with its Linear biases folded (out/model-int8-fused.onnx) is a candidate on the same terms where the fold found
    a bias (else "layouts_skipped" says so: unchanged, it is only what onnxruntime runs from the QDQ file anyway).

    INT8 pays when the chosen layout is at least `min_speedup` times faster than FP32 and every quantized layer
    runs as an integer kernel; `min_speedup` 0 ships INT8 whatever was measured.

    Writes out/model.optimized.onnx (the graph onnxruntime runs here; a candidate's beside it). Returns
    {"layout", "layouts", "integer_kernels" (of the chosen layout), "timing", "int8_pays", "reason"} and, when
    another layout than QDQ is chosen, its "validation".
    """
    # real examples at the timed sequence length (images as they are)
    feeds = encoded_feeds(data, model_input_names(out / "model.onnx"), seq_len, limit=TIMING_FEEDS)
    candidates = {"qdq": out / "model.onnx"}
    validations: dict[str, dict] = {}
    if dynamic is not None:
        # the QAT model's float twin: its trained weights, activations quantized at run time (no calibrated ranges)
        candidates["dynamic"] = dynamic_int8(out / "model-fp32.onnx", out / "model-int8-dynamic.onnx", reduce_range)
        validations["dynamic"] = dynamic(candidates["dynamic"])
    built: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    if fused is not None:
        path, facts = fused_host_graph(out / "model.onnx", out / "model-int8-fused.onnx")
        if facts["biases_folded"]:
            candidates["fused"], built["fused"] = path, facts
            validations["fused"] = fused(path)
        else:  # onnxruntime's own graph, unchanged: what it runs from the QDQ file anyway, minus portability
            path.unlink()
            skipped["fused"] = "no Linear bias left beside an integer MatMul in onnxruntime's graph: nothing to fold"
    kernels = {name: integer_kernel_report(path, path.with_suffix(".optimized.onnx"), feeds[0])
               for name, path in candidates.items()}
    # with one candidate and min_speedup 0 no choice rests on the timing: one round reports it
    decides = len(candidates) > 1 or min_speedup > 0
    p50 = time_models({**candidates, "fp32": out / "model-fp32.onnx"}, feeds, rounds_n=ROUNDS if decides else 1)
    layouts = {name: {"file": path.name, "p50_ms": p50[name], "speedup": p50["fp32"] / p50[name],
                      "integer_kernels_ok": kernels[name]["ok"], "size_mb": path.stat().st_size / 1e6,
                      **({"argmax_agreement": validations[name]["argmax_agreement"],
                          "validation_failures": validations[name]["failures"]} if name in validations else {}),
                      **built.get(name, {})}
               for name, path in candidates.items()}
    eligible = [name for name, facts in layouts.items()
                if name != "qdq" and not _ineligible(facts)
                and p50["qdq"] / facts["p50_ms"] >= _REPLACES_QDQ_AT.get(name, LAYOUT_MARGIN)]
    layout = min(eligible, key=lambda name: p50[name]) if eligible else "qdq"  # the fastest that may replace QDQ
    chosen = layouts[layout]
    timing = {"int8_p50_ms": chosen["p50_ms"], "fp32_p50_ms": p50["fp32"], "speedup": chosen["speedup"],
              "threads": 1, "rounds": ROUNDS, "runs": RUNS}
    case = f"batch 1, {'sequence ' + str(seq_len) + ', ' if data.images is None else ''}1 thread"
    k = kernels[layout]
    left = [f"{f['node']} ({f['op']})" for f in k["float_layers"] if f["quantized_weight"]]
    pays = min_speedup == 0 or (timing["speedup"] >= min_speedup and k["ok"])
    reason = (f"INT8 ({_LAYOUT_NAMES[layout]}) is {timing['speedup']:.2f}x its FP32 export on this host ({case}: "
              f"{timing['int8_p50_ms']:.3g} against {timing['fp32_p50_ms']:.3g} ms)")
    # the layouts not chosen, measured in the same rounds
    others = [f"{_LAYOUT_NAMES[n]} {f['speedup']:.2f}x{_ineligible(f)}" for n, f in layouts.items() if n != layout]
    if others:
        rule = f"another layout replaces QDQ at {LAYOUT_MARGIN:g}x QDQ's speed"
        if "fused" in layouts:
            rule += f"; the fused graph, QDQ's own arithmetic, unless 1/{LAYOUT_MARGIN:g} as fast"
        reason += f"; against {', '.join(others)} ({rule})"
    if left:  # onnxruntime dequantizes these weights on every inference and runs the layer in float
        reason += (f"; {len(left)} quantized layer(s) run as float kernels in onnxruntime's optimised graph: "
                   f"{', '.join(left[:4])}{' ...' if len(left) > 4 else ''}")
    if not pays:
        reason += (f"; below export.int8_min_speedup={min_speedup:g}" if timing["speedup"] < min_speedup else "")
        reason += ": the FP32 model ships"
    return {"layout": layout, "layouts": layouts, **({"layouts_skipped": skipped} if skipped else {}),
            "integer_kernels": k, "timing": {**timing, "case": case},
            "int8_pays": pays, "reason": reason, **({"validation": validations[layout]} if layout in validations else {})}


_LAYOUT_NAMES = {"qdq": "QAT QDQ", "dynamic": "dynamic activations",
                 "fused": "onnxruntime's fused graph of QAT QDQ, biases folded"}
