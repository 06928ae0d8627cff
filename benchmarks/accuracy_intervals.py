"""How sure is an accuracy difference on test.tsv? Paired bootstrap intervals for the differences the issues judge.

    python benchmarks/accuracy_intervals.py --mode full   # on the cached run of `make bench` (about a minute)

test.tsv has 872 sentences: one is 0.11 points, and two models that agree on 91% of them differ by about a point
from sampling alone. So a target such as "pruning loses <= 0.5 points" is judged with the 95% interval of the
difference, resampling the sentences (paired: both models answer the same resampled sentences; scipy's bootstrap,
percentile method, 10,000 resamples). sst2.py writes the same intervals into every benchmark result.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (name, from, to): the difference `to` - `from` in accuracy points, as the issues state their targets
DIFFERENCES = (
    ("pruning (issue 12: >= -0.5)", "edgekd-student-fp32", "edgekd-pruned-fp32"),
    ("INT8 against its own FP32 export (issue 10: >= -0.3)", "edgekd-qat-fp32", "edgekd-int8"),
    ("shipped model against the teacher", "teacher-fp32", "edgekd-int8"),
    ("shipped model against the distilled student", "edgekd-student-fp32", "edgekd-int8"),
)


def paired_intervals(correct: dict[str, np.ndarray], seed: int = 0) -> dict[str, dict]:
    """{difference: {"points", "ci95", "from", "to"}} for each of DIFFERENCES whose systems are in `correct`
    ({system: per-sentence 0/1 correctness on the same sentences})."""
    from scipy.stats import bootstrap

    out = {}
    for name, a, b in DIFFERENCES:
        if a not in correct or b not in correct:
            continue
        d = 100.0 * (correct[b].astype(np.float64) - correct[a].astype(np.float64))
        res = bootstrap((d,), np.mean, n_resamples=10_000, confidence_level=0.95, method="percentile",
                        random_state=np.random.default_rng(seed))
        ci = res.confidence_interval
        out[name] = {"from": a, "to": b, "points": float(d.mean()), "ci95": [float(ci.low), float(ci.high)],
                     "sentences": int(d.size), "disagreeing": int(np.count_nonzero(d))}
    return out


def describe(intervals: dict[str, dict]) -> list[str]:
    return [f"{name}: {v['points']:+.2f} points (95% interval {v['ci95'][0]:+.2f} to {v['ci95'][1]:+.2f}; "
            f"{v['disagreeing']} of {v['sentences']} sentences right in one and wrong in the other)"
            for name, v in intervals.items()]


def main() -> None:
    from sst2 import MODES, build_systems, run_pipeline, test_data

    from edgekd.devices.runtime import onnx_logits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="full")
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--run-dir", default=None, help="the benchmark's run folder (default runs/bench-<mode>)")
    args = ap.parse_args()
    run_dir = Path(args.run_dir or HERE.parent / "runs" / f"bench-{args.mode}")
    pipe = run_pipeline(args.mode, args.data, run_dir)  # every stage cached after `make bench`
    paths, _ = build_systems(pipe, run_dir / "bench", args.mode)
    wanted = {s for _, a, b in DIFFERENCES for s in (a, b)}
    data = test_data(pipe, paths)  # each system as sst2.py feeds it (edgekd's exports: the trimmed tokenizer)
    correct = {name: onnx_logits(paths[name], data[name], desc=f"test {name}").argmax(-1) == data[name].labels
               for name in wanted}
    result = paired_intervals(correct)
    out = HERE / "results" / f"accuracy-intervals-{args.mode}.json"
    out.write_text(json.dumps({"run": str(run_dir), "artifacts": {a.stage: a.id for a in pipe.artifacts},
                               "intervals": result}, indent=2) + "\n")
    print("\n".join(describe(result)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
