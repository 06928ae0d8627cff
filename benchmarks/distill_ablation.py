"""Distillation ablation on SST-2 (issue 11): which loss terms transfer what, for a 2-layer student,
and how other students (3 layers, a BiLSTM, text CNNs: --variants 3-layers+augment bilstm+augment cnn+augment
cnn-wide+augment) do on the flagship's best data.

    python -m benchmarks.distill_ablation --mode quick   # the quick benchmark's teacher and schedules (4,000 examples)

Every loss variant distils the same student (MiniLM-L6 layers [2, 5], the flagship's student until the 3-layer
row below made the recipe switch to [1, 3, 5]) from the same cached teacher, in one run folder
(the teacher is trained once), then reports test.tsv accuracy, agreement with the teacher, expected calibration
error (15 bins) of student and teacher, wall time and device. Model selection never reads test.tsv.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name: distill overrides. The recipe's distill runs on the augmented transfer set: the variants without it say so
# (3 passes over the train split, the schedule the flagship used before the transfer set).
TRAIN_SPLIT = {"epochs": 3, "transfer": None}
VARIANTS = {
    "ce-only": {"alpha": 0.0, **TRAIN_SPLIT},
    "logit-kd": {"alpha": 0.9, **TRAIN_SPLIT},
    "logit-kd+hidden+attention": {"alpha": 0.9, "hidden_weight": 1.0, "attention_weight": 1.0, **TRAIN_SPLIT},
    # TinyBERT's transfer set: the train split plus 4 augmented copies labelled by the teacher, one pass over it
    "logit-kd+augment": {"alpha": 0.9, "epochs": 1, "transfer": {"augment": {"copies": 4, "replace_prob": 0.3,
                                                                             "neighbours": 15}}},
}
AUGMENT = VARIANTS["logit-kd+augment"]
TWO_LAYERS = {"kind": "layers", "layers": [2, 5]}  # the loss variants' student, whatever the recipe's is
# Other students on the flagship's best data (logit KD on the augmented transfer set): name -> (student, distill).
STUDENTS = {
    "3-layers+augment": ({"kind": "layers", "layers": [1, 3, 5]}, AUGMENT),
    # two passes (the better epoch on dev kept): the 2-layer student kept 98.0% in one, the issue asks 98.5%
    "2-layers+augment-2ep": (TWO_LAYERS, {**AUGMENT, "epochs": 2}),
    # Tang et al. 2019: the teacher's 384-wide embeddings projected to 128, 256 units per direction
    "bilstm+augment": ({"kind": "bilstm", "embedding_dim": 128, "lstm_hidden": 256}, {**AUGMENT, "lr": 1.0e-3}),
    "cnn+augment": ({"kind": "cnn", "channels": [256, 256], "kernel_size": 3, "embedding_dim": 256},
                    {**AUGMENT, "lr": 1.0e-3}),
    # twice the channels (a text CNN takes the teacher's 384-wide embeddings as they are, whatever embedding_dim
    # says): the 256-channel CNN runs 22.8x the teacher, so width is the cheap lever toward the 96% the issue asks
    "cnn-wide+augment": ({"kind": "cnn", "channels": [512, 512], "kernel_size": 3, "embedding_dim": 384},
                         {**AUGMENT, "lr": 1.0e-3}),
    # the same, two passes over the transfer set (the better epoch on dev is kept): 0.18 points short of 96% in one
    "cnn-wide+augment-2ep": ({"kind": "cnn", "channels": [512, 512], "kernel_size": 3, "embedding_dim": 384},
                             {**AUGMENT, "lr": 1.0e-3, "epochs": 2}),
}
MODES = {"quick": {"teacher": ["teacher.finetune.max_train_examples=4000", "teacher.finetune.epochs=1"],
                   "distill": {"max_train_examples": 4000, "epochs": 2}},
         "full": {"teacher": [], "distill": {}}}


def main() -> None:
    from .machine import commit, host_facts, versions

    from edgekd.pipeline import Pipeline
    from edgekd.recipe import apply_overrides, load_recipe_dict, validate_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--variants", nargs="+", choices=sorted({**VARIANTS, **STUDENTS}), default=list(VARIANTS))
    ap.add_argument("--run-dir", default=None, help="default: runs/bench-<mode> (the benchmark's, whose teacher is cached)")
    args = ap.parse_args()
    mode = MODES[args.mode]
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-{args.mode}")
    out = HERE / "results" / f"distill-ablation-{args.mode}.json"
    rows = json.loads(out.read_text())["variants"] if out.is_file() else {}  # variants not re-run keep their rows
    launched = commit()  # the code the variants run (edgekd imports lazily: do not edit it while this runs)
    for name in args.variants:
        student, over = STUDENTS[name] if name in STUDENTS else (None, VARIANTS[name])
        raw = apply_overrides(load_recipe_dict(ROOT / "recipes" / "sst2-minilm.yaml"),
                              [f"data.path={args.data}", f"output={run_dir}", *mode["teacher"]])
        raw["student"] = student or TWO_LAYERS
        distill = next(s["distill"] for s in raw["stages"] if "distill" in s)
        raw["stages"] = [{"distill": {**distill, **mode["distill"], **over}}]
        raw["profiles"] = ["host-cpu"]
        pipe = Pipeline(validate_recipe(raw, f"ablation {name}"))
        start = time.perf_counter()
        metrics = pipe.run()["distill"]
        wall = time.perf_counter() - start
        art = next(a for a in pipe.artifacts if a.stage == "distill")
        t = metrics["transfer"]  # the distill stage's own report on test.tsv (ECE of both, disagreements)
        rows[name] = {"distill": {**mode["distill"], **over}, "commit": launched, "test_accuracy": metrics["test_accuracy"],
                      "dev_accuracy": metrics["dev_accuracy"], "agreement": metrics["test_agreement"],
                      "ece": t["ece"], "teacher_ece": t["teacher_ece"], "per_class_accuracy": t["per_class_accuracy"],
                      "teacher_test_accuracy": t["teacher_accuracy"], "kept": metrics["test_accuracy"] / t["teacher_accuracy"],
                      "train_wall_s": metrics["train"].get("wall_s"), "stage_wall_s": wall,
                      "device": metrics["train"].get("device"), "artifact": art.id,
                      "student": raw["student"], "params": art.spec["summary"]["params"],
                      **({"transfer_set": metrics["train"]["transfer_set"]} if "transfer_set" in metrics["train"] else {})}
        print(f"{name}: test {100 * metrics['test_accuracy']:.2f}% (kept {100 * rows[name]['kept']:.1f}%), agreement "
              f"{100 * metrics['test_agreement']:.2f}%, ECE {rows[name]['ece']:.3f}")
    out.write_text(json.dumps({"benchmark": f"distill-ablation-{args.mode}", "variants": rows, "machine": host_facts(),
                               "versions": versions(), "commit": launched,
                               "date": datetime.date.today().isoformat(),
                               "student": "MiniLM-L6 layers [2, 5] unless the row's student says otherwise"},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
