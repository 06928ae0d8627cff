"""Does dev tell test's accuracy? SST-2's dev file against `data.dev_holdout` (whole train sentences held out).

SST-2's dev.tsv is mostly phrases of train sentences (87% occur inside one), so a model scores several points
higher on it than on test.tsv's unseen sentences, and choices made on dev (select_on_dev, pruning steps) follow
recall. This trains the flagship recipe's teacher (and its distilled student) twice, once with the dev file and
once with `data.dev_holdout: 872` (872 whole train sentences held out with their phrases; the dev file unused), and
reports each model's dev and test.tsv accuracy and the gap between them. `--stages teacher` (the default) fine-tunes the
teacher only; `--stages distill` distils the student too.

    python -m benchmarks.dev_holdout                 # quick: the benchmark's quick-mode teacher, ~8 min on 2 cores
    python -m benchmarks.dev_holdout --mode full     # the whole train split (hours on a CPU)

Writes benchmarks/results/dev-holdout-<mode>-<stages>.json. Run nothing beside it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

HOLDOUT = 872  # as many sentences as test.tsv
VARIANTS = {"dev-file": [], "dev-holdout": [f"data.dev_holdout={HOLDOUT}"]}


def run(mode: str, data: str, variant: str, upto: str) -> dict:
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import apply_overrides, load_recipe_dict, validate_recipe
    from .sst2 import MODES

    run_dir = ROOT / "runs" / f"bench-{mode}"  # the benchmark's: its dev-file stages are reused, the others cached
    raw = apply_overrides(load_recipe_dict(ROOT / "recipes" / "sst2-minilm.yaml"),
                          [f"data.path={data}", f"output={run_dir}", *MODES[mode]["overrides"], *VARIANTS[variant]])
    raw["stages"] = [s for s in raw["stages"] if "distill" in s] if upto == "distill" else []
    raw["profiles"] = ["host-cpu"]
    started = time.perf_counter()
    pipe = Pipeline(validate_recipe(raw, f"dev-holdout {variant}"))
    pipe.run()
    row = {"variant": variant, "overrides": VARIANTS[variant], "wall_s": round(time.perf_counter() - started, 1),
           "data": pipe.ctx.data.checks, "dev_examples": len(pipe.ctx.data.dev),
           "train_examples": len(pipe.ctx.data.train)}
    for art in pipe.artifacts:  # the teacher, then the distilled student
        m = art.metrics
        row[art.stage] = {"artifact": str(art.path.relative_to(ROOT)), "dev": m["dev_accuracy"],
                          "test": m["test_accuracy"],
                          "dev_minus_test_points": round(100 * (m["dev_accuracy"] - m["test_accuracy"]), 2)}
    return row


def main() -> None:
    from .machine import commit, host_facts, versions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["quick", "full"], default="quick")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--stages", choices=["teacher", "distill"], default="teacher")
    args = ap.parse_args()
    rows = [run(args.mode, args.data, v, args.stages) for v in VARIANTS]
    doc = {"what": __doc__.splitlines()[0], "mode": args.mode, "rows": rows, "machine": host_facts(),
           "versions": versions(), "commit": commit(), "date": datetime.date.today().isoformat()}
    out = HERE / "results" / f"dev-holdout-{args.mode}-{args.stages}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(r["variant"], {k: r[k] for k in ("teacher", "distill") if k in r})
    print("wrote", out)


if __name__ == "__main__":
    main()
