"""What does pruning the flagship student to half cost on test.tsv, and how much does longer recovery win back?

Issue 12 asks that the student pruned to at most half of its non-embedding parameters loses <= 0.5 points of
test.tsv accuracy after recovery. `make bench` measures it after QAT and export too; this script isolates the
pruning: it runs the prune stage (the flagship recipe's prune config, changed as each variant says) on the run's
distilled student, and compares the pruned model's test.tsv predictions (PyTorch FP32) with the unpruned
student's: the difference and its paired-bootstrap 95% interval (as accuracy_intervals.py), dev accuracy before
and after each step's recovery, widths and wall time, and test.tsv accuracy by input length (dev is phrases of the
train split's sentences, test.tsv whole sentences twice as long: where the pruned model loses). A variant whose
model a run already made (a prune artifact under the run's stages/ from this student with the variant's exact
config: `make bench` made the recipe's) is read, not trained again.

    python -m benchmarks.prune_recovery --distill runs/bench-full/stages/01-distill-<id> --variants recipe recovery-1ep
    python -m benchmarks.prune_recovery --mode quick --distill runs/bench-quick/stages/01-distill-<id> --variants recipe 3-steps

Writes benchmarks/results/prune-recovery-<mode>.json (variants not re-run keep their rows). Each step's recovery
is checkpointed under the run's work folder, so a killed variant resumes. Run nothing beside it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LENGTH_EDGES = [12, 24, 40]  # WordPiece tokens: test.tsv's buckets hold 75, 331, 373 and 93 sentences

# name: changes to the recipe's prune config (`--set` keys inside it, YAML values)
VARIANTS = {
    "recipe": [],  # 2 steps, half a pass over the augmented transfer set per step
    "recovery-1ep": ["recovery.epochs=1.0"],  # a whole pass per step (twice the recovery)
    # every attention head kept, FFN channels alone pay the budget: test.tsv loses most on the longest sentences
    "all-heads": ["head_ratio=0"],
    "3-steps": ["steps=3"],  # smaller cuts, each recovered for half a pass
    # the other granularities, under the same budget: one whole layer first (the 3-layer student keeps 2), or a
    # quarter of the hidden width (384 -> 288, embeddings and every LayerNorm too), then heads and FFN for the rest
    "drop-1-layer": ["drop_layers=1"],
    "hidden-0.25": ["hidden_ratio=0.25"],
    # CoFi's layer distillation: each layer's hidden states pulled toward its own unpruned self (the student before
    # pruning runs beside it), on top of the recipe's logit terms
    "layer-kd": ["recovery.hidden_weight=1.0", "recovery.layer_teacher=unpruned"],
    # every layer cut by the same share (global ranking leaves the last layer 160 of 1536 FFN channels)
    "per-layer": ["global_pruning=false"],
    # recovery at a third of the distillation's learning rate: the cut model stays nearer the features it had
    "low-lr": ["recovery.lr=3e-5"],
    "lr-1e-5": ["recovery.lr=1e-5"],  # a tenth
    # each recovery ends with a moving average of its weights (about the last 1,000 of its ~3,900 steps)
    "ema": ["recovery.weight_ema=0.999"],
    "low-lr-ema": ["recovery.lr=3e-5", "recovery.weight_ema=0.999"],
}


def prune_config(variant: list[str], mode: str):
    """The flagship recipe's prune config with the benchmark mode's overrides (sst2.py's: quick recovers on 1,000
    examples) and the variant's on top."""
    from .sst2 import MODES

    from edgekd.configs import PruneConfig
    from edgekd.recipe import apply_overrides, load_recipe_dict

    raw = load_recipe_dict(ROOT / "recipes" / "sst2-minilm.yaml")
    index = next(i for i, s in enumerate(raw["stages"]) if "prune" in s)
    raw = apply_overrides(raw, [*MODES[mode]["overrides"], *(f"stages.{index}.prune.{o}" for o in variant)])
    cfg = raw["stages"][index]["prune"]
    return PruneConfig.model_validate(cfg), cfg


def main() -> None:
    from .stats import describe, paired_intervals
    from .prune_importance import flagship_context

    from edgekd.models.spec import architecture_summary, build_model, load_model_from_artifact, load_weights
    from edgekd.prune.stage import run_prune
    from edgekd.prune.structured import non_embedding_params
    from edgekd.train.predict import predict_logits

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["quick", "full"], default="full",
                    help="the benchmark mode whose run folder this is (quick: recovery on 1,000 examples, as sst2.py)")
    ap.add_argument("--run-dir", type=Path, help="default: runs/bench-<mode>")
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--distill", type=Path, required=True, help="the distilled student's stage folder")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["recovery-1ep"])
    args = ap.parse_args()
    args.run_dir = args.run_dir or ROOT / "runs" / f"bench-{args.mode}"

    ctx, parent = flagship_context(args.run_dir, args.data, args.distill)
    test = ctx.encoded("test")

    def correct(model) -> torch.Tensor:
        return predict_logits(model.eval(), test, desc="test").argmax(-1) == test.labels

    base = load_model_from_artifact(parent)
    base_correct = correct(base)
    base_ne = non_embedding_params(base)
    out = HERE / "results" / f"prune-recovery-{args.mode}.json"
    rows = json.loads(out.read_text())["variants"] if out.is_file() else {}

    # each sentence's bucket by its length in WordPiece tokens ([CLS] and [SEP] included)
    bucket = np.digitize([len(ids) for ids in test.ids], LENGTH_EDGES)
    names = [f"{lo}-{hi - 1}" for lo, hi in zip([0, *LENGTH_EDGES], LENGTH_EDGES)] + [f"{LENGTH_EDGES[-1]}+"]

    def by_length(pruned: np.ndarray) -> list[dict]:
        return [{"tokens": name, "examples": int(sel.sum()), "unpruned": float(base_correct[sel].mean()),
                 "pruned": float(pruned[sel].mean())} for name, sel in ((n, bucket == b) for b, n in enumerate(names))]

    def row(name: str, model, metrics: dict, cfg: dict, wall_s: float | None, artifact: str | None) -> dict:
        pruned = correct(model)
        intervals = paired_intervals({"edgekd-student-fp32": base_correct, "edgekd-pruned-fp32": pruned})
        print("\n".join(describe(intervals)), flush=True)
        steps = [{k: s.get(k) for k in ("step", "ratio", "non_embedding_params", "macs", "latency_ms",
                                        "int8_dynamic_latency_ms", "latency_case", "dev_accuracy_before_recovery",
                                        "dev_accuracy")} | {"recovery_wall_s": s.get("recovery", {}).get("wall_s")}
                 for s in metrics.get("steps", [])]
        return {"prune_config": cfg, "artifact": artifact, "steps": steps,
                "architecture": architecture_summary(model),
                "non_embedding_kept": non_embedding_params(model) / base_ne,
                "dev_accuracy": metrics.get("dev_accuracy"), "test_accuracy": metrics.get("test_accuracy"),
                "pruning_cost": next(iter(intervals.values())), "test_by_length": by_length(pruned), "wall_s": wall_s,
                "device": str(ctx.runtime.device)}

    for name in args.variants:
        cfg, cfg_dict = prune_config(VARIANTS[name], args.mode)
        art = _made_by_the_run(args.run_dir, parent.id, cfg)
        if art is not None:  # a run already trained it: read, do not re-train
            print(f"{name}: reading {art.path.name}", flush=True)
            rows[name] = row(name, load_model_from_artifact(art), art.metrics, cfg_dict, None, art.id)
        else:
            folder = args.run_dir / "bench" / "prune-recovery" / name
            folder.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            # key: the work folder of its checkpoints (a killed variant resumes at its last finished step)
            key = f"prune-recovery-{name}-{parent.id}"
            result = run_prune(cfg, parent, ctx, folder, key)
            shutil.rmtree(ctx.work_dir(key), ignore_errors=True)  # its step checkpoints: only a killed variant needs them
            model = load_weights(build_model(result["spec"]), folder)  # run_prune saved the pruned weights there
            rows[name] = row(name, model, result["metrics"], cfg_dict, time.perf_counter() - t0, None)
        out.write_text(json.dumps(_document(rows, parent, args), indent=2) + "\n")  # after each: a kill keeps rows
    print(f"wrote {out}")


def _made_by_the_run(run_dir: Path, parent: str, config: "PruneConfig"):
    """The run's complete prune artifact of this student with exactly this config (compared as validated configs:
    a field added since, at its default, does not hide it), if a run made one."""
    from edgekd.artifact import Artifact, is_complete
    from edgekd.configs import PruneConfig

    for folder in sorted((run_dir / "stages").glob("*-prune-*")):
        if is_complete(folder):
            art = Artifact.load(folder)
            if art.manifest.get("parent") == parent and PruneConfig.model_validate(art.manifest.get("config")) == config:
                return art
    return None


def _document(rows: dict, parent, args) -> dict:
    from .machine import commit, host_facts, versions

    return {"what": __doc__.split("\n")[0], "distilled_student": parent.id,
            "distilled_test_accuracy": parent.metrics.get("test_accuracy"), "variants": rows,
            "machine": host_facts(), "versions": versions(),
            "commit": commit(), "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    main()
