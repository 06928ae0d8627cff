"""How well do repeated latency measurements agree on this machine? Three protocols, same models.

    python -m benchmarks.latency_repeatability runs/sst2-minilm     # ~4 min on the 2-core reference VM
    python -m benchmarks.latency_repeatability runs/sst2-minilm --rounds 10 --runs 25   # another rounds setting

Models: the flagship's shipped INT8 model and its FP32 export, at seq 128 with 1 and 2 threads.
Protocols, each repeated REPEATS times in interleaved order:
- single: one process, 10 warm-up + 50 timed runs, p50 (what edgekd did before rounds);
- pinned: the same with the process pinned to CPUs 0..threads-1 (os.sched_setaffinity);
- rounds: edgekd's profile protocol, 5 rounds of `single` spread over time, p50 = lowest round median.
Agreement of a protocol = max / min - 1 over its repeats (the spread a user sees between two runs).
Results: benchmarks/results/latency-repeatability.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .machine import host_facts, versions

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "latency-repeatability.json"
REPEATS, WARMUP = 4, 10


def export_models(run_dir: str) -> tuple[dict[str, Path], dict[str, list[dict]]]:
    """A run's INT8 export and its FP32 twin, and the feeds of each: 8 random sequences of 128 tokens."""
    from edgekd.devices.feeds import model_input_names, text_feeds

    run = Path(run_dir)
    export = next(run / a for a in json.loads((run / "run.json").read_text())["artifacts"] if "-export-" in a)
    models = {"edgekd-int8": export / "model.onnx", "edgekd-fp32": export / "model-fp32.onnx"}
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1000, 20000, 128)) for _ in range(8)]
    return models, {m: text_feeds(ids, model_input_names(p), 128) for m, p in models.items()}


def main(run_dir: str, rounds: int = 5, runs: int = 50) -> None:
    """Single and pinned measurements take `runs` timed runs; the rounds protocol `rounds` of them."""
    from edgekd.devices.latency import combine_rounds, measure_latency

    models, feeds = export_models(run_dir)
    cases = [(m, t) for m in models for t in (1, 2)]
    one = lambda m, t, pin=False: measure_latency(models[m], feeds[m], t, WARMUP, runs,  # noqa: E731
                                                  affinity=list(range(t)) if pin else None)
    got: dict[tuple, dict[str, list[float]]] = {c: {"single": [], "pinned": [], "rounds": []} for c in cases}
    start = time.perf_counter()
    for rep in range(REPEATS):
        for m, t in (cases if rep % 2 == 0 else cases[::-1]):
            got[(m, t)]["single"].append(one(m, t)["p50"])
            got[(m, t)]["pinned"].append(one(m, t, pin=True)["p50"])
        per_round: dict[tuple, list[dict]] = {c: [] for c in cases}
        for r in range(rounds):  # as the profile stage: rounds go over all cases in turn, alternating order
            for c in (cases if r % 2 == 0 else cases[::-1]):
                per_round[c].append(one(*c))
        for c in cases:
            got[c]["rounds"].append(combine_rounds(per_round[c])["p50"])
        print(f"repeat {rep + 1}/{REPEATS} done", file=sys.stderr)
    rows = [{"model": m, "seq_len": 128, "threads": t,
             **{proto: {"p50s_ms": [round(v, 3) for v in vals], "agreement": round(max(vals) / min(vals) - 1, 4)}
                for proto, vals in got[(m, t)].items()}} for m, t in cases]
    summary = {proto: {"median_agreement": float(np.median([r[proto]["agreement"] for r in rows])),
                       "worst_agreement": max(r[proto]["agreement"] for r in rows)} for proto in ("single", "pinned", "rounds")}
    result = {"benchmark": "latency-repeatability: max/min - 1 of repeated p50 measurements, three protocols",
              "protocols": {"single": f"one process, {WARMUP} warm-up + {runs} runs, p50",
                            "pinned": "single, process pinned to CPUs 0..threads-1",
                            "rounds": f"edgekd profile stage: {rounds} rounds of single, lowest round p50"},
              "repeats": REPEATS, "cases": rows, "summary": summary,
              "runtime_s": round(time.perf_counter() - start, 1),
              "machine": host_facts(), "versions": versions()}
    out = RESULT if (rounds, runs) == (5, 50) else RESULT.with_name(f"latency-repeatability-{rounds}x{runs}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for proto, s in summary.items():
        print(f"{proto:7s} agreement between repeats: median {s['median_agreement']:.1%}, worst {s['worst_agreement']:.1%}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?", default="runs/sst2-minilm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args()
    main(a.run_dir, a.rounds, a.runs)
