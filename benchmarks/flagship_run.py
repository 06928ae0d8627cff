"""Record a finished flagship run as benchmarks/results/flagship-run.json (its profile stage, and the estimator against it).

    make flagship      # recipes/sst2-minilm.yaml with a GPU, recipes/sst2-minilm-cpu.yaml without, then this script
    python -m benchmarks.flagship_run runs/sst2-minilm-cpu

Shape (later benchmarks extend it with peer systems):
{"systems": {"teacher-fp32": {...}, "edgekd-int8": {...}, "edgekd-fp32": {...}}, "machine": {...},
 "versions": {...}, "commit": str}; each system has accuracy, agreement (with the teacher), size_mb,
params and latency_ms -> seq128_t1 / seq128_t2 / natural_t1 -> p50 / p90 (ONNX Runtime, batch 1; p50 is
the lowest of the profile stage's round medians, see edgekd.devices.latency.combine_rounds), throughput
at batch 8, and "npu": the hexagon-npu device build (size, agreement, accuracy, compatibility, estimate).
All numbers are measured on the exported ONNX files; accuracy is on test.tsv (872 sentences).
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from .machine import commit, versions

NAMES = {"teacher-fp32": "teacher-fp32", "final": "edgekd-int8", "final-fp32": "edgekd-fp32"}
CASES = ("seq128_t1", "seq128_t2", "natural_t1")


def host_estimates(run_dir: Path, m: dict, systems: dict) -> dict:
    """edgekd's latency estimate for the host next to the measurement, for every model and fixed shape."""
    from edgekd.devices.estimate import estimate_latency
    from edgekd.devices.profiles import load_profile

    folders = {Path(p).name.rsplit("-", 1)[-1]: run_dir / p
               for p in json.loads((run_dir / "run.json").read_text())["artifacts"]}
    host = load_profile("host-cpu")
    cases = []
    for src, dst in NAMES.items():
        s = m["systems"][src]
        path = folders[s["artifact"]] / s["file"]
        for case, (seq, threads) in {"seq128_t1": (128, 1), "seq128_t2": (128, 2)}.items():
            measured = systems[dst]["latency_ms"][case]["p50"]
            est = estimate_latency(path, host, seq, threads)["ms"]
            cases.append({"model": dst, "seq_len": seq, "threads": threads, "measured_ms": measured,
                          "estimated_ms": est, "rel_error": (est - measured) / measured})
    return {"cases": cases, "max_abs_rel_error": max(abs(c["rel_error"]) for c in cases),
            "within_15pct": sum(abs(c["rel_error"]) <= 0.15 for c in cases)}


def main(run_dir: str, out: str = "benchmarks/results/flagship-run.json") -> None:
    m = json.loads((Path(run_dir) / "manifest.json").read_text())
    systems = {}
    for src, dst in NAMES.items():
        s = m["systems"][src]
        lat = s["latency_ms"]["host-cpu"]
        systems[dst] = {
            "accuracy": s["accuracy"], "agreement": s["agreement"], "size_mb": s["size_mb"], "params": s["params"],
            "examples": s["examples"],
            "latency_ms": {c: {k: lat[c].get(k) for k in ("p50", "p90", "p99", "runs", "rounds", "round_p50s",
                                                           "round_spread", "peak_memory_mb", "session_create_ms")}
                           for c in CASES},
            "throughput": {c: {k: x[k] for k in ("batch_size", "items_per_s", "ms_per_batch", "round_spread")}
                           for c, x in (s.get("throughput") or {}).get("host-cpu", {}).items()},
        }
    npu = m["systems"].get("final-hexagon-npu")
    if npu:
        npu = {"accuracy": npu["accuracy"], "agreement_with_teacher": npu["agreement"], "size_mb": npu["size_mb"],
               "file": "devices/hexagon-npu/model.onnx", "compat": m["compat"]["hexagon-npu"],
               "export_agreement_with_pytorch": m["device_models"]["hexagon-npu"]["argmax_agreement"],
               "estimated_latency_ms": npu["latency_ms"]["hexagon-npu"],
               "accuracy_note": "onnxruntime CPU running the device's static full-INT8 QDQ graph"}
    estimator = host_estimates(Path(run_dir), m, systems)
    int8, fp32, teacher = systems["edgekd-int8"], systems["edgekd-fp32"], systems["teacher-fp32"]
    result = {
        "benchmark": f"sst2-full: recipes/{m['name']}.yaml end to end, measured on the exported ONNX models",
        "data": "SST-2 test.tsv (GLUE validation set, 872 sentences); natural_t1 over the first "
                f"{int8['latency_ms']['natural_t1']['runs']} test sentences at their own lengths",
        "systems": systems,
        "derived": {
            "int8_speedup_vs_own_fp32_seq128_t1": fp32["latency_ms"]["seq128_t1"]["p50"] / int8["latency_ms"]["seq128_t1"]["p50"],
            "int8_speedup_vs_teacher_seq128_t1": teacher["latency_ms"]["seq128_t1"]["p50"] / int8["latency_ms"]["seq128_t1"]["p50"],
            "accuracy_retained": int8["accuracy"] / teacher["accuracy"],
            "size_ratio_vs_teacher": teacher["size_mb"] / int8["size_mb"],
        },
        "estimator_vs_measured_host": estimator,
        "npu_build": npu,
        "measurement": next(st["metrics"].get("measurement") for st in m["stages"] if st["stage"] == "profile"),
        "stages": [{"stage": s["stage"], "params": s["params"], "test_accuracy_pytorch": s["metrics"].get("test_accuracy"),
                    "architecture": s.get("architecture")} for s in m["stages"] if s["stage"] != "profile"],
        "machine": {**m["machine"], "python": platform.python_version()},
        "versions": versions(), "commit": commit(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    d = result["derived"]
    print(f"teacher {teacher['accuracy']:.4f}  int8 {int8['accuracy']:.4f} (retained {d['accuracy_retained']:.1%}); "
          f"seq128 t1: int8 {int8['latency_ms']['seq128_t1']['p50']:.2f} ms vs own fp32 "
          f"{fp32['latency_ms']['seq128_t1']['p50']:.2f} ms ({d['int8_speedup_vs_own_fp32_seq128_t1']:.2f}x), "
          f"teacher {teacher['latency_ms']['seq128_t1']['p50']:.2f} ms; size {int8['size_mb']:.1f} MB -> {out}")
    if npu:
        print(f"hexagon-npu build: {npu['size_mb']:.1f} MB, accuracy {npu['accuracy']:.4f}, fallback "
              f"{npu['compat']['fallback_nodes_share']:.0%} of nodes, ok={npu['compat']['ok']}")
    e = result["estimator_vs_measured_host"]
    print(f"host latency estimates: {e['within_15pct']}/{len(e['cases'])} within 15%, max |rel err| {e['max_abs_rel_error']:.1%}")


if __name__ == "__main__":
    main(*sys.argv[1:])
