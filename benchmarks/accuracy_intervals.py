"""How sure is an accuracy difference on test.tsv? Paired bootstrap intervals for the differences the issues judge.

    python -m benchmarks.accuracy_intervals --mode full   # on the cached run of `make bench` (about a minute)

test.tsv has 872 sentences: one is 0.11 points, and two models that agree on 91% of them differ by about a point
from sampling alone. So a target such as "pruning loses <= 0.5 points" is judged with the 95% interval of the
difference, resampling the sentences (paired: both models answer the same resampled sentences; scipy's bootstrap,
percentile method, 10,000 resamples: stats.py). sst2.py writes the same intervals into every benchmark result.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .stats import DIFFERENCES, describe, paired_intervals

HERE = Path(__file__).resolve().parent


def main() -> None:
    from .sst2 import MODES, build_systems, run_pipeline, test_data

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
