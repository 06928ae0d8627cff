"""The MPNet teacher's text CNN on its token embeddings copied (`cnn-wide`, 768 wide) or reduced by SVD (`cnn-svd640`,
`student.init_embeddings_from_teacher: svd`), measured in one run with the teacher and Optimum's INT8 of it:

    python -m benchmarks.cnn_embedding --set teacher.path=$(python -m benchmarks.mpnet_teacher)

Both students go through the CPU-sized recipe's stages as `make bench-mpnet` runs them (`benchmarks/sst2.py
--students`), in the same run folder, so the teacher, its labels and whatever `make bench-mpnet` already trained
are cached; then accuracy on `test.tsv` and latency by that benchmark's protocol (fresh processes, rounds, the
quietest round's p50). The NPU builds' HTP results come from the export stage. Why a benchmark of its own: the
embedding table is most of a trimmed text CNN's file, and this measures what a smaller one costs in accuracy,
without the hours of re-measuring every other system of `make bench-mpnet`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

from .machine import commit, host_facts, versions
from .stats import describe, paired_intervals
from .sst2 import ROOT, _arts, _shipped, bench_spec, measure, optimum_peer_dir, run_pipeline

HERE = Path(__file__).resolve().parent
STUDENTS = ("cnn-wide", "cnn-svd640")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("EDGEKD_SST2_DIR", str(ROOT.parent / "shared" / "data" / "sst2")))
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-mpnet-cpu"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides (teacher.path)")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    launched = commit()
    pipes = {v: run_pipeline("cpu", args.data, Path(args.run_dir), args.set, "mpnet", v) for v in STUDENTS}
    pipe = pipes[STUDENTS[0]]
    peer = optimum_peer_dir(Path(args.run_dir) / "bench", _arts(pipe)["teacher"].id)
    if not (peer / "facts.json").is_file():
        raise SystemExit(f"{peer}: Optimum's INT8 of this teacher is built by `make bench-mpnet` first")
    paths = {"teacher-fp32": _arts(pipe)["export"].path / "teacher.onnx",
             "peer-teacher-dynamic-int8": peer / json.loads((peer / "facts.json").read_text())["file"]}
    for v, p in pipes.items():
        paths[f"edgekd-{v}-int8"] = _shipped(_arts(p)["export"].path)[0]
    # seq 128 and own-length cases at batch 1 (the targets' case among them); no NPU build is timed here
    spec = {**bench_spec("mpnet", "cpu"), "npu_builds": {}, "throughput": False, "torch_peer": False}
    systems, correct = measure(pipe, paths, spec, pipes)
    intervals = paired_intervals(correct)
    teacher, optimum = (systems[n]["latency_ms"]["seq128_t1"]["p50"] for n in ("teacher-fp32", "peer-teacher-dynamic-int8"))
    for s in systems.values():
        ms = s["latency_ms"]["seq128_t1"]["p50"]
        s["x_teacher_fp32"], s["x_peer_dynamic_int8"] = teacher / ms, optimum / ms
        s["x_smaller"] = systems["teacher-fp32"]["size_mb"] / s["size_mb"]
    students = {}
    for v, p in pipes.items():
        arts = _arts(p)
        prune = arts["prune"].manifest["metrics"]
        students[v] = {"student": p.recipe.student.model_dump(mode="json"),
                       "stages": {a.stage: {"id": a.id, "test_accuracy": a.manifest["metrics"].get("test_accuracy")}
                                  for a in p.artifacts},
                       "prune": {"after": prune["after"], "macs_seq128": prune["steps"][-1].get("macs"),
                                 "non_embedding_params_after": prune["non_embedding_params_after"]},
                       "export": {k: arts["export"].manifest["metrics"].get(k)
                                  for k in ("size_mb", "shipped", "int8_speedup", "devices", "vocabulary")}}
    out = HERE / "results" / "cnn-embedding-mpnet-cpu.json"
    out.write_text(json.dumps({
        "benchmark": "cnn-embedding", "teacher": "mpnet", "mode": "cpu", "systems": systems, "students": students,
        "accuracy_intervals": intervals, "machine": host_facts(), "versions": versions(), "commit": launched,
        "started": started.isoformat(),
        "wall_s": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()}, indent=2,
        default=str) + "\n")
    for name, s in systems.items():
        print(f"{name:28s} {100 * s['accuracy']:6.2f}% {s['size_mb']:7.2f} MB {s['latency_ms']['seq128_t1']['p50']:8.3f} ms"
              f"  {s['x_teacher_fp32']:7.1f}x teacher {s['x_peer_dynamic_int8']:6.1f}x Optimum {s['x_smaller']:5.1f}x smaller")
    print("\n".join(describe(intervals)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
