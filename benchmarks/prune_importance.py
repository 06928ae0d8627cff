"""Which importance criterion keeps the most of the flagship student when it is pruned, before any recovery?

Pruning removes what its importance ranks lowest; recovery then trains the rest. The less a criterion
loses at the cut, the less recovery has to win back, so the criteria are compared where they differ:
dev accuracy right after pruning a distilled student to its budget, for each criterion and for several
sizes of the batch the gradient criteria are scored on. Dev only: the test split is never used to choose.

    python -m benchmarks.prune_importance --run-dir runs/bench-full --data ../shared/data/sst2

It reads the run's teacher and distilled student (the newest `*-distill-*` stage, or --distill) and writes
benchmarks/results/prune-importance-<mode>.json. About a minute per case on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .machine import commit, host_facts, versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def newest(run_dir: Path, stage: str) -> Path:
    # finished artifacts only: a stage still running writes into a .tmp-… folder (no manifest yet)
    found = sorted((p for p in (run_dir / "stages").glob(f"*-{stage}-*") if (p / "manifest.json").is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no {stage} stage in {run_dir}/stages: run the benchmark (make bench) first")
    return found[-1]


def flagship_context(run_dir: Path, data: str, distill: Path | None):
    """The flagship recipe's context on a benchmark run folder (its teacher and caches) and the distilled student."""
    from edgekd.artifact import Artifact
    from edgekd.recipe import apply_overrides, load_recipe_dict, validate_recipe
    from edgekd.train.context import Context

    raw = apply_overrides(load_recipe_dict(ROOT / "recipes" / "sst2-minilm.yaml"),
                          [f"data.path={data}", f"output={run_dir}"])
    ctx = Context(validate_recipe(raw, "prune benchmark"), run_dir)
    ctx.teacher = Artifact.load(newest(run_dir, "teacher"))
    return ctx, Artifact.load(distill or newest(run_dir, "distill"))


def kd_loss_on(ctx, n: int, sample: str = "first"):
    """n train examples as a batch (the first n, the n longest, or n at random), and the prune stage's importance
    loss on them (logit KD, T = 2)."""
    from edgekd.models.hf import logits_of
    from edgekd.train.losses import logit_kd_loss

    enc = ctx.encoded("train")
    idx = (np.arange(n) if sample == "first" else np.argsort(-enc.lengths, kind="stable")[:n] if sample == "longest"
           else np.random.default_rng(0).choice(len(enc), n, replace=False))
    example = enc.batch(idx)
    teacher = torch.from_numpy(ctx.teacher_logits("train")[idx])
    labels = torch.from_numpy(enc.labels[idx])
    return example, lambda m: logit_kd_loss(logits_of(m, example), teacher, labels, 2.0, 0.5)


def main() -> None:
    from edgekd.configs import PruneConfig
    from edgekd.models.spec import architecture_summary, load_model_from_artifact
    from edgekd.prune.stage import _ratio_for
    from edgekd.prune.structured import non_embedding_params, prune_structured
    from edgekd.train.distiller import evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-full")
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--distill", type=Path, help="the distilled student's stage folder (default: the newest)")
    ap.add_argument("--criteria", nargs="+", default=["magnitude", "taylor", "loss"])
    ap.add_argument("--examples", nargs="+", type=int, default=[32, 256])
    ap.add_argument("--shares", nargs="+", type=float, default=[0.7, 0.5],
                    help="budgets: share of the non-embedding parameters kept (0.7 ~ the flagship's first step)")
    ap.add_argument("--samples", nargs="+", default=["first"], choices=["first", "longest", "random"],
                    help="which train examples the gradient criteria are scored on (the stage takes the first)")
    ap.add_argument("--test", action="store_true", help="also report test.tsv accuracy (to explain a result: the "
                    "choices above stay with dev)")
    ap.add_argument("--mode", default="full")
    args = ap.parse_args()

    torch.manual_seed(0)
    ctx, parent = flagship_context(args.run_dir, args.data, args.distill)
    family = parent.spec["family"]
    round_to = 16  # host-cpu's width_multiple, as the flagship recipe prunes

    base = load_model_from_artifact(parent)
    start = non_embedding_params(base)
    splits = ("dev", "test") if args.test else ("dev",)
    rows = [{"criterion": "unpruned", "examples": 0, "share": 1.0, **evaluate(base, ctx, "unpruned", splits)}]
    print(rows[0])
    for share in args.shares:
        for criterion in args.criteria:
            cases = [(n, sample) for n in args.examples for sample in args.samples]
            for n, sample in (cases if criterion != "magnitude" else [(0, "first")]):
                cfg = PruneConfig(importance=criterion, budget={"params": share})
                example, loss = kd_loss_on(ctx, max(n, 32), sample)
                model = load_model_from_artifact(parent).eval()
                t0 = time.perf_counter()
                ratio = _ratio_for(model, share * start, non_embedding_params, example, cfg, family, loss, round_to)
                prune_structured(model, example, cfg, family, loss, ratio=ratio, round_to=round_to)
                row = {"criterion": criterion, "examples": n, "sample": sample, "share": share, "ratio": ratio,
                       "kept_non_embedding": non_embedding_params(model) / start,
                       "architecture": architecture_summary(model), "prune_s": round(time.perf_counter() - t0, 1),
                       **evaluate(model, ctx, f"{criterion} {n}", splits)}
                print(row, flush=True)
                rows.append(row)
    out = HERE / "results" / f"prune-importance-{args.mode}.json"
    out.write_text(json.dumps({"what": __doc__.split("\n")[0], "distilled_student": parent.path.name,
                               "machine": host_facts(), "versions": versions(), "commit": commit(),
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
