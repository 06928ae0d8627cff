"""The flagship benchmark: edgekd against what users would pick instead, side by side, measured in one run.

    python -m benchmarks.sst2 --mode quick    # make bench-quick: about 25 min on 2 cores (small teacher, short schedules)
    python -m benchmarks.sst2 --mode full     # make bench: the flagship recipe (recipes/sst2-minilm.yaml)
    python -m benchmarks.sst2 --teacher mpnet --mode quick   # make bench-mpnet-quick: the 110M MPNet-base teacher
    python -m benchmarks.sst2 --teacher mpnet --mode cpu     # make bench-mpnet: recipes/sst2-mpnet-cpu.yaml
    python -m benchmarks.sst2 --teacher mpnet --mode full    # recipes/sst2-mpnet.yaml (sized for a GPU)

One run builds (or takes from the run's cache) the recipe's pipeline — teacher, distilled student, pruned
student, QAT, export — and the peers (peers.py), then measures every system with the same inputs, threads and
timing protocol (edgekd's rounds: every case in `rounds` fresh processes, alternating order, p50 = the quietest
round, p90 pooled): accuracy and agreement with the teacher on the 872 sentences of test.tsv, latency at batch 1
for sequence 128 and each sentence's own length with 1 and 2 threads, throughput at batch 32 (2 threads), file
size and peak memory. Each model reads the texts with its own tokenizer (a pretrained student brings one).
`--students` adds other students of the same teacher (STUDENTS), each distilled, pruned, QAT-trained and exported
by the same recipe in the same run folder (the teacher and its labels are trained and computed once).
Writes benchmarks/results/sst2[-mpnet]-<mode>.json, the Pareto plot next to it, and the Markdown table:
benchmarks/RESULTS.md (MiniLM, full), RESULTS-quick.md, RESULTS-mpnet.md (MPNet, full), RESULTS-mpnet-<mode>.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .machine import commit, host_facts, versions
from .stats import paired_intervals

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# quick: a small teacher and short schedules — the systems keep their architectures, so latency and size
# ratios are those of the full mode; accuracies are not.
MODES = {
    "quick": {"overrides": ["teacher.finetune.max_train_examples=4000", "teacher.finetune.epochs=1",
                            "stages.0.distill.max_train_examples=4000", "stages.0.distill.epochs=2",
                            "stages.1.prune.recovery.max_train_examples=1000",
                            "stages.2.qat.max_train_examples=1000", "stages.2.qat.calibration_batches=8"],
              "rounds": 3, "runs": 30, "natural_max": 100, "calibration": 128, "throughput": True, "torch_peer": True},
    "full": {"overrides": [], "rounds": 5, "runs": 50, "natural_max": 300, "calibration": 256, "throughput": True,
             "torch_peer": True},
}
# The recipe's NPU build in both of Qualcomm's schemes, each compiled and run on the whole test split by
# onnxruntime-qnn's HTP backend where it is installed (else onnxruntime's CPU kernels simulate it, labelled so).
NPU_BUILDS = {"hexagon-npu": "edgekd-npu-w8a8", "hexagon-npu-w8a16": "edgekd-npu-w8a16"}
# The large teacher (all-mpnet-base-v2, `make mpnet`). quick: the teacher on 1,500 phrases, the student on 2,000
# (x5 with the augmented copies), each pruning step recovering on a quarter pass over the same transfer set (its
# labels and the teacher's outputs are the distillation's, cached: a smaller subset would be labelled again), and
# the recipe's w8a16 NPU build checked on 150 test sentences on the HTP's emulation (the whole split takes it about
# 10 minutes); cpu: recipes/sst2-mpnet-cpu.yaml as it is.
MPNET_QUICK = ["teacher.finetune.max_train_examples=1500", "teacher.finetune.epochs=2",
               "stages.0.distill.max_train_examples=2000", "stages.1.prune.recovery.max_train_examples=2000",
               "stages.1.prune.recovery.epochs=0.25",
               "stages.2.qat.max_train_examples=1000", "stages.2.qat.calibration_batches=8",
               "stages.3.export.htp_examples=150"]
MPNET_BUILDS = {"hexagon-npu-w8a16": "edgekd-npu-w8a16"}
MPNET_MODES = {
    # quick: no batch-32 throughput case (the teacher-side systems spend 4 of its minutes there) and no PyTorch
    # dynamic INT8 of the teacher (about 3 minutes of fresh processes, each loading and quantizing the 110M model): no
    # target reads either, and the peers (Optimum's dynamic INT8, onnxruntime's static PTQ) stay
    "quick": {**MODES["quick"], "overrides": MPNET_QUICK, "recipe": "sst2-mpnet-cpu.yaml", "throughput": False,
              "torch_peer": False},
    "cpu": {**MODES["full"], "recipe": "sst2-mpnet-cpu.yaml"},
    "full": {**MODES["full"], "recipe": "sst2-mpnet.yaml"},
}


def _cnn_wide(width: int, prune: dict | None = None, svd: bool = False) -> dict:
    """The wide text CNN of the distillation ablation, on the teacher's own embeddings (`width` wide), or on them
    reduced to `width` columns by SVD (a smaller table: most of this student's file)."""
    student = {"kind": "cnn", "channels": [512, 512], "kernel_size": 3, "embedding_dim": width}
    if svd:
        student["init_embeddings_from_teacher"] = "svd"
    return {"student": student, "distill": {"lr": 1.0e-3}, "prune": prune or {}}


# The MPNet recipes' student keeps MiniLM-L6's 6 layers through distillation and drops 3 of them when pruning, to 15%
# of its non-embedding parameters; the further students are 3 layers (or none) from the start: they keep the same
# share of those, 30%, with no layer to drop.
_MPNET_OTHER_PRUNE = {"drop_layers": 0, "budget": {"params": 0.3}}


# Per teacher: its modes; the recipe of the modes that name none; its NPU builds; whether onnxruntime's static PTQ
# of the teacher is a peer too; other students (--students: {name: {"student": its config, "distill" and "prune":
# overrides of those stages}}), each pruned, QAT-trained and exported by the recipe's own stages.
TEACHERS = {
    "minilm": {"modes": MODES, "recipe": "sst2-minilm.yaml", "npu_builds": NPU_BUILDS, "teacher_ptq": False,
               "students": {"cnn-wide": _cnn_wide(384)}},
    "mpnet": {"modes": MPNET_MODES, "recipe": None, "npu_builds": MPNET_BUILDS, "teacher_ptq": True,
              # MPNet's own layers, 768 wide, initialised from them
              "students": {"teacher-layers": {"student": {"kind": "layers", "layers": [3, 7, 11]}, "distill": {},
                                              "prune": _MPNET_OTHER_PRUNE},
                           "cnn-wide": _cnn_wide(768, _MPNET_OTHER_PRUNE),
                           # the table is most of cnn-wide's INT8 file: 640 columns are sized for the 50x-smaller target
                           "cnn-svd640": _cnn_wide(640, _MPNET_OTHER_PRUNE, svd=True)}},
}
LATENCY_CASES = ("seq128_t1", "seq128_t2", "natural_t1")
THROUGHPUT_CASE = "b32_seq128_t2"


def bench_spec(teacher: str, mode: str) -> dict:
    """A mode of a teacher's benchmark with what it inherits from the teacher's entry in TEACHERS."""
    t = TEACHERS[teacher]
    if mode not in t["modes"]:
        raise SystemExit(f"--mode {mode}: the {teacher} benchmark has modes {sorted(t['modes'])}")
    cfg = t["modes"][mode]
    return {**cfg, "teacher": teacher, "recipe": cfg.get("recipe") or t["recipe"], "npu_builds": t["npu_builds"],
            "teacher_ptq": t["teacher_ptq"]}


def bench_recipe(mode: str, data: str, run_dir: Path, extra: list[str] = (), teacher: str = "minilm",
                 student: str | None = None):
    """The teacher's recipe without its profile stage (this benchmark measures every system itself), validated;
    `student`: one of the teacher's other STUDENTS instead of the recipe's."""
    from edgekd.recipe import apply_overrides, load_recipe_dict, validate_recipe

    spec = bench_spec(teacher, mode)
    raw = apply_overrides(load_recipe_dict(ROOT / "recipes" / spec["recipe"]),
                          [f"data.path={data}", f"output={run_dir}", *spec["overrides"], *extra])
    raw["stages"] = [s for s in raw["stages"] if "profile" not in s]
    raw["profiles"] = ["host-cpu", *spec["npu_builds"]]
    other = copy.deepcopy(TEACHERS[teacher]["students"][student]) if student else None  # its dicts are shared
    if other:
        raw["student"] = other["student"]
    for stage in raw["stages"]:
        if "export" in stage:
            stage["export"]["devices"] = list(spec["npu_builds"])
            if other:  # where the HTP leaves a further student's nodes to the CPU, its row says so: a finding
                stage["export"]["npu_fallback"] = "allow"
        for name in ("distill", "prune"):
            if other and name in stage:
                stage[name].update(other[name])
    return validate_recipe(raw, f"benchmark {teacher} {mode}" + (f" student {student}" if student else ""))


def run_pipeline(mode: str, data: str, run_dir: Path, extra: list[str] = (), teacher: str = "minilm",
                 student: str | None = None):
    """bench_recipe's pipeline, run (cached stages taken from `run_dir`: another student of the same teacher in the
    same folder trains the teacher and computes its labels once)."""
    from edgekd.pipeline import Pipeline

    pipe = Pipeline(bench_recipe(mode, data, run_dir, extra, teacher, student))
    pipe.run()
    return pipe


def npu_builds(spec: dict, variants: dict | None = None) -> dict[str, tuple[str, str | None]]:
    """{system: (profile, the student it belongs to: None for the recipe's)} of every NPU build."""
    out = {name: (profile, None) for profile, name in spec["npu_builds"].items()}
    for v in variants or {}:
        out |= {f"edgekd-{v}-{name.removeprefix('edgekd-')}": (profile, v) for profile, name in spec["npu_builds"].items()}
    return out


def npu_peers(spec: dict) -> dict[str, str]:
    """{system: profile} of the NPU baseline (npu_peer.py): onnxruntime's QNN PTQ recipe of the recipe's pruned FP32
    student, in the scheme of each of the recipe's NPU builds."""
    return {name.replace("edgekd-npu-", "peer-npu-qnn-ptq-"): profile for profile, name in spec["npu_builds"].items()}


def _arts(pipe) -> dict:
    return {a.stage: a for a in pipe.artifacts}


def _shipped(export: Path) -> tuple[Path, Path, bool]:
    """(the INT8 model, its own FP32 export, whether INT8 shipped): where INT8 did not pay on the host the export
    shipped the FP32 one as model.onnx and kept the INT8 one as model-int8.onnx."""
    shipped_fp32 = (export / "model-int8.onnx").is_file()
    return (export / ("model-int8.onnx" if shipped_fp32 else "model.onnx"),
            export / ("model.onnx" if shipped_fp32 else "model-fp32.onnx"), not shipped_fp32)


def _float_student(art, inputs, path: Path) -> Path:
    """A float student exported the way edgekd exports it (cached by artifact)."""
    from edgekd.export.onnx_export import export_onnx
    from edgekd.models.spec import load_model_from_artifact

    if not path.is_file():
        export_onnx(load_model_from_artifact(art), inputs, path, 17)
    return path


def _cached_ptq(src: Path, dst: Path, encoded, vnni: bool, op_types: list[str] | None = None) -> dict:
    """onnxruntime's static QDQ PTQ of an ONNX model, calibrated on `encoded` (cached with its facts)."""
    from edgekd.devices.feeds import model_input_dims, text_feeds
    from .peers import static_ptq

    facts_file = dst.with_suffix(".json")
    if not dst.is_file() or not facts_file.is_file():
        feeds = text_feeds(encoded.ids, list(model_input_dims(src)), None, encoded.pad_id)
        facts_file.write_text(json.dumps(static_ptq(src, dst, feeds, vnni, op_types)))
    return json.loads(facts_file.read_text())


def optimum_peer_dir(work: Path, teacher_id: str) -> Path:
    """Where build_systems keeps Optimum's dynamic INT8 of a teacher artifact (its facts.json names the model file)."""
    return work / f"peer-teacher-dynamic-int8-{teacher_id}"


def build_systems(pipe, work: Path, mode: str, spec: dict | None = None,
                  variants: dict | None = None) -> tuple[dict, dict]:
    """{name: ONNX path} of every ONNX system, and facts about how each peer was made. `variants`: {student name:
    its pipeline} of other students of the same teacher, each with its float, INT8 and NPU builds."""
    from edgekd.models.onnx_graph import example_inputs
    from edgekd.models.spec import load_model_from_artifact
    from .peers import optimum_peer

    spec = spec or bench_spec("minilm", mode)
    arts = _arts(pipe)
    ctx = pipe.ctx
    vnni = host_facts()["isa"]["vnni"]
    work.mkdir(parents=True, exist_ok=True)
    key = arts["teacher"].id
    facts: dict = {}
    paths = {"teacher-fp32": arts["export"].path / "teacher.onnx"}
    # the peer of the teacher, cached per teacher artifact
    peer_dir = optimum_peer_dir(work, key)
    if not (peer_dir / "facts.json").is_file():
        tmp = work / f".tmp-{peer_dir.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        path, f = optimum_peer(load_model_from_artifact(arts["teacher"]), arts["teacher"].path, tmp, vnni)
        f["file"] = str(path.relative_to(tmp))
        (tmp / "facts.json").write_text(json.dumps(f, indent=2))
        shutil.rmtree(peer_dir, ignore_errors=True)
        tmp.rename(peer_dir)
    facts["peer-teacher-dynamic-int8"] = json.loads((peer_dir / "facts.json").read_text())
    paths["peer-teacher-dynamic-int8"] = peer_dir / facts["peer-teacher-dynamic-int8"]["file"]
    if spec["teacher_ptq"]:  # what onnxruntime's own static quantization makes of the teacher
        paths["peer-teacher-static-ptq"] = work / f"peer-teacher-static-ptq-{key}.onnx"
        facts["peer-teacher-static-ptq"] = _cached_ptq(paths["teacher-fp32"], paths["peer-teacher-static-ptq"],
                                                       ctx.teacher_encoded("train", spec["calibration"]), vnni,
                                                       # onnxruntime's default set also quantizes MPNet's relative
                                                       # position buckets, whose log(0) = -inf calibrates to a NaN
                                                       # scale and breaks the Gather indices: the matrix products only
                                                       ["MatMul", "Gemm"])
    # edgekd's own float students, exported the way edgekd exports them
    inputs = example_inputs(ctx.task, ctx.data.preprocess)
    for name, stage in (("edgekd-student-fp32", "distill"), ("edgekd-pruned-fp32", "prune")):
        paths[name] = _float_student(arts[stage], inputs, work / f"{name}-{arts[stage].id}.onnx")
    paths["peer-student-static-ptq"] = work / f"peer-student-static-ptq-{arts['prune'].id}.onnx"
    facts["peer-student-static-ptq"] = _cached_ptq(paths["edgekd-pruned-fp32"], paths["peer-student-static-ptq"],
                                                   ctx.encoded("train", spec["calibration"]), vnni)
    # the QAT model and its own FP32 export (same network, quantization off)
    export = arts["export"].path
    paths["edgekd-int8"], paths["edgekd-qat-fp32"], shipped = _shipped(export)
    facts["edgekd-int8"] = {"shipped": shipped, "int8_decision": arts["export"].manifest.get("int8", {}).get("reason")}
    for v, vp in (variants or {}).items():
        va = _arts(vp)
        paths[f"edgekd-{v}-fp32"] = _float_student(va["distill"], example_inputs(vp.ctx.task, vp.ctx.data.preprocess),
                                                   work / f"edgekd-{v}-fp32-{va['distill'].id}.onnx")
        paths[f"edgekd-{v}-int8"], _, shipped = _shipped(va["export"].path)
        facts[f"edgekd-{v}-int8"] = {"shipped": shipped, "student": TEACHERS[spec["teacher"]]["students"][v]["student"],
                                     "int8_decision": va["export"].manifest.get("int8", {}).get("reason")}
    for name, (profile, v) in npu_builds(spec, variants).items():
        paths[name] = _arts(variants[v] if v else pipe)["export"].path / "devices" / profile / "model.onnx"
    from edgekd.devices import qnn

    if not qnn.available():
        print("no onnxruntime-qnn (pip install edgekd[qnn]): the NPU baseline rows (peer-npu-qnn-ptq-*) are not built")
        return paths, facts
    from .npu_peer import qnn_ptq_peer

    pruned = load_model_from_artifact(arts["prune"])
    for name, profile in npu_peers(spec).items():
        # at the shape of the recipe's own build of that scheme, on as many test sentences as it ran on the HTP
        build = arts["export"].manifest["devices"][profile]
        folder = work / f"{name}-{arts['prune'].id}"
        facts[name] = qnn_ptq_peer(pruned, ctx, profile, folder, build["onnx"]["seq_len"],
                                   (build.get("htp") or {}).get("examples"))
        paths[name] = folder / "model.onnx"
    return paths, facts


def host_profile(throughput: bool = True):
    from edgekd.devices.profiles import load_profile

    return load_profile("host-cpu").model_copy(update={"threads": [1, 2], "seq_lens": [128],
                                                       "batch_sizes": [1, 32] if throughput else [1]})


def torch_peer(pipe, test, teacher_pred: np.ndarray, cfg: dict) -> dict:
    """peer-torch-dynamic-int8: accuracy in PyTorch, latency in fresh processes in rounds (torch_latency.py)."""
    from edgekd.devices.feeds import text_feeds
    from edgekd.models.spec import load_model_from_artifact
    from edgekd.devices.latency import combine_rounds
    from edgekd.train.predict import predict_logits
    from .peers import torch_dynamic_int8, torch_size_mb

    teacher_art = next(a for a in pipe.artifacts if a.stage == "teacher")
    model = torch_dynamic_int8(load_model_from_artifact(teacher_art))
    pred = predict_logits(model, test, desc="accuracy peer-torch-dynamic-int8").argmax(-1)
    names = ["input_ids", "attention_mask"]
    cases = {"seq128_t1": (text_feeds(test.ids[:32], names, 128, test.pad_id), 1, cfg["runs"]),
             "seq128_t2": (text_feeds(test.ids[:32], names, 128, test.pad_id), 2, cfg["runs"]),
             "natural_t1": (text_feeds(test.ids[:cfg["natural_max"]], names, None, test.pad_id), 1, None)}
    if cfg["throughput"]:
        batch = {n: np.concatenate([f[n] for f in cases["seq128_t1"][0]], axis=0) for n in names}
        cases[THROUGHPUT_CASE] = ([batch], 2, 5)
    rounds: dict[str, list] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="edgekd-torch-") as tmp:
        for r in range(cfg["rounds"]):
            for case, (feeds, threads, runs) in (cases.items() if r % 2 == 0 else reversed(cases.items())):
                npz = Path(tmp) / f"{case}.npz"
                if not npz.is_file():
                    np.savez(npz, **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})
                args = {"artifact": str(teacher_art.path), "feeds": str(npz), "n_feeds": len(feeds), "names": names,
                        "threads": threads, "warmup": 5 if case == THROUGHPUT_CASE else 10,
                        "runs": runs or len(feeds)}
                proc = subprocess.run([sys.executable, "-m", "benchmarks.torch_latency", json.dumps(args)], cwd=ROOT,
                                      capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-2000:])
                rounds[case].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    lat = {c: combine_rounds(rounds[c]) for c in cases}
    return {"accuracy": float((pred == test.labels).mean()), "agreement": float((pred == teacher_pred).mean()),
            "size_mb": torch_size_mb(model), "runtime": f"PyTorch {version('torch')} (CPU, dynamic qint8 nn.Linear)",
            "latency_ms": {c: _lat(lat[c]) for c in LATENCY_CASES},
            **({"throughput_b32": 32 / (lat[THROUGHPUT_CASE]["p50"] / 1000)} if THROUGHPUT_CASE in lat else {}),
            "peak_memory_mb": max(x["peak_memory_mb"] for x in lat.values())}


def _lat(stats: dict) -> dict:
    keep = ("p50", "p90", "p99", "round_spread", "rounds", "runs", "peak_memory_mb", "session_create_ms")
    return {k: stats[k] for k in keep if k in stats}


# systems that read the texts as the teacher does (its own tokenizer where a pretrained student brings another)
TEACHER_SIDE = ("teacher-", "peer-teacher-", "peer-torch-")


def _pipe_of(name: str, pipe, variants: dict | None):
    return next((vp for v, vp in (variants or {}).items() if name.startswith(f"edgekd-{v}-")), pipe)


def test_data(pipe, paths: dict, variants: dict | None = None) -> dict:
    """The test split as each system is fed: the teacher and its peers with the teacher's tokenizer; each student
    with its own, and edgekd's exports with their folder's (renumbered by export.vocabulary: fallback)."""
    from edgekd.artifact import renumbered_vocabulary

    out = {}
    for name, path in paths.items():
        if name.startswith(TEACHER_SIDE):
            out[name] = pipe.ctx.teacher_encoded("test")
            continue
        p = _pipe_of(name, pipe, variants)
        export = _arts(p)["export"]
        own = renumbered_vocabulary(export.manifest) and export.path in path.parents
        out[name] = p.ctx.encoded("test", tokenizer_dir=export.path if own else None)
    return out


def measure(pipe, paths: dict, spec: dict, variants: dict | None = None, facts: dict | None = None) -> tuple[dict, dict]:
    """{system: accuracy, agreement, size and timings} and {system: per-sentence correctness on test.tsv}; `spec`:
    bench_spec's; `facts`: build_systems's (the NPU baseline's HTP results)."""
    from edgekd.profile.measure import accuracy_on, measure_models

    test = pipe.ctx.teacher_encoded("test")
    data = test_data(pipe, paths, variants)
    systems: dict[str, dict] = {}
    acc, teacher_pred = accuracy_on(paths["teacher-fp32"], test, None, "accuracy teacher-fp32")
    systems["teacher-fp32"] = {**acc, "agreement": 1.0}
    correct = {"teacher-fp32": teacher_pred == test.labels}
    for name, path in paths.items():
        if name != "teacher-fp32":
            systems[name], pred = accuracy_on(path, data[name], teacher_pred, f"accuracy {name}")
            correct[name] = pred == data[name].labels
    npu = npu_builds(spec, variants)
    peers = {n: profile for n, profile in npu_peers(spec).items() if n in paths}
    timed = {n: p for n, p in paths.items() if n not in npu and n not in peers}  # device builds: estimated below
    latency, throughput = measure_models(timed, {n: data[n] for n in timed}, host_profile(spec["throughput"]),
                                         warmup=10, runs=spec["runs"], rounds=spec["rounds"], natural=True,
                                         natural_max=spec["natural_max"], desc="benchmark timing")
    for name, path in paths.items():
        s = systems[name]
        s["size_mb"] = path.stat().st_size / 1e6
        s["runtime"] = f"onnxruntime {version('onnxruntime')} CPUExecutionProvider, ORT_ENABLE_ALL"
        if name in timed:
            s["latency_ms"] = {c: _lat(latency[name][c]) for c in LATENCY_CASES}
            if THROUGHPUT_CASE in throughput[name]:
                s["throughput_b32"] = throughput[name][THROUGHPUT_CASE]["items_per_s"]
            s["peak_memory_mb"] = max(x["peak_memory_mb"] for x in latency[name].values())
    for name, (profile, v) in npu.items():
        systems[name], on_htp = npu_system(variants[v] if v else pipe, profile, paths[name], systems[name], test,
                                           teacher_pred)
        _htp_answers(correct, name, systems[name], on_htp)
    for name, profile in peers.items():
        systems[name], on_htp = npu_system(pipe, profile, paths[name], systems[name], test, teacher_pred,
                                           facts[name]["htp"])
        _htp_answers(correct, name, systems[name], on_htp)
    if spec["torch_peer"]:
        systems["peer-torch-dynamic-int8"] = torch_peer(pipe, test, teacher_pred, spec)
    return systems, correct


def _htp_answers(correct: dict, name: str, row: dict, on_htp) -> None:
    """The HTP's per-sentence answers replace the simulation's; where the HTP ran on part of the split, the build has
    none (its paired intervals would otherwise be the simulation's, under the HTP's name)."""
    if on_htp is not None:
        correct[name] = on_htp
    elif "placement" in row:
        correct.pop(name, None)


def npu_system(pipe, profile: str, path: Path, simulated: dict, test, teacher_pred: np.ndarray,
               htp: dict | None = None):
    """An NPU build's row: accuracy and agreements as Qualcomm's HTP backend computed them in the export (`htp`: or
    in the NPU baseline's build; the CPU simulation beside them), where its nodes went, and its latency estimated with
    the profile's anchored error."""
    from safetensors.numpy import load_file

    from edgekd.devices.anchors import estimate_trust
    from edgekd.devices.estimate import estimate_latency, load_calibration
    from edgekd.devices.profiles import load_profile

    row = dict(simulated)
    if htp is None:  # edgekd's build: from its export's manifest, with the weights it started from
        build = (_arts(pipe)["export"].manifest.get("devices") or {}).get(profile, {})
        htp = build.get("htp") or {"checked": False}
        if build.get("weights"):
            row["built_from"] = build["weights"]["from"]
    correct = None
    if htp.get("checked"):
        pred = load_file(str(path.parent / htp["logits"]))["logits"].argmax(-1)
        n = len(pred)
        correct = pred == test.labels[:n]
        row.update({
            "accuracy": float(correct.mean()), "agreement": float((pred == teacher_pred[:n]).mean()), "examples": n,
            "agreement_with_pytorch": htp["argmax_agreement"], "pytorch_accuracy": htp["pytorch_accuracy"],
            "accuracy_by": f"{htp['by']} (HTP v{htp['htp_arch']})", "context_binary": htp.get("context"),
            "placement": {k: htp["placement"][k] for k in ("htp_nodes", "cpu_nodes", "partitions", "cpu_ops")},
            "simulated": {k: simulated[k] for k in ("accuracy", "agreement") if k in simulated}})
        if n < len(test.labels):  # the paired intervals need every sentence: this row stays out of them
            correct = None
    else:
        row["accuracy_by"] = "onnxruntime CPU running the device's static QDQ graph (a simulation: no onnxruntime-qnn)"
    cal = load_calibration()
    device = load_profile(profile)
    trust = estimate_trust(profile, cal)
    est = estimate_latency(path, device, None, 1, cal)
    row["latency_ms"] = {"device_b1_t1": {"p50": est["ms"], "estimated": True, "device": profile,
                                          "seq_len": est["seq_len"], **trust}}
    row["runtime"] = f"{device.execution_provider} ({profile}); latency estimated, not measured"
    return row, correct


def edgekd_stages(pipe) -> dict:
    out = {}
    for a in pipe.artifacts:
        train = a.metrics.get("train") or a.metrics.get("recovery")
        out[a.stage] = {"artifact": a.id, **({k: train.get(k) for k in ("wall_s", "examples_per_s", "device", "processes",
                                                                          "precision", "examples", "epochs")}
                                             if train else {})}
    return out


def ratios(systems: dict) -> dict:
    """p50 speed-up of every system over teacher-fp32 and peer-teacher-dynamic-int8, accuracy kept, size ratio."""
    out: dict[str, dict] = {}
    t, peer = systems["teacher-fp32"], systems["peer-teacher-dynamic-int8"]
    for name, s in systems.items():
        r: dict = {"accuracy_kept": s["accuracy"] / t["accuracy"], "smaller_than_teacher": t["size_mb"] / s["size_mb"]}
        for case in LATENCY_CASES:
            x = s.get("latency_ms", {}).get(case)
            if x:
                r[f"speedup_vs_teacher_{case}"] = t["latency_ms"][case]["p50"] / x["p50"]
                r[f"speedup_vs_peer_dynamic_{case}"] = peer["latency_ms"][case]["p50"] / x["p50"]
                # the spread of the rounds of both cases: how far the machine's noise can move the ratio
                r[f"noise_{case}"] = x.get("round_spread", 0.0) + t["latency_ms"][case].get("round_spread", 0.0)
        out[name] = r
    own = systems.get("edgekd-qat-fp32", {}).get("latency_ms", {})
    for case in LATENCY_CASES:  # the QAT INT8 model against its own FP32 export (issue: >= 2.5x where INT8 pays)
        if own.get(case) and systems["edgekd-int8"].get("latency_ms", {}).get(case):
            out["edgekd-int8"][f"speedup_vs_own_fp32_{case}"] = (own[case]["p50"]
                                                                  / systems["edgekd-int8"]["latency_ms"][case]["p50"])
    if "edgekd-qat-fp32" in systems:
        out["edgekd-int8"]["accuracy_points_vs_own_fp32"] = 100 * (systems["edgekd-int8"]["accuracy"]
                                                                   - systems["edgekd-qat-fp32"]["accuracy"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", choices=sorted(TEACHERS), default="minilm",
                    help="minilm: the flagship (recipes/sst2-minilm.yaml); mpnet: the 110M MPNet-base (make mpnet)")
    ap.add_argument("--mode", default="quick", help="minilm: quick | full; mpnet: quick | cpu | full")
    ap.add_argument("--students", nargs="*", default=[], metavar="NAME",
                    help="other students of the same teacher, each through the recipe's stages: "
                         + "; ".join(f"{t}: {' '.join(v['students'])}" for t, v in TEACHERS.items()))
    ap.add_argument("--data", default=os.environ.get("EDGEKD_SST2_DIR", str(ROOT.parent / "shared" / "data" / "sst2")))
    ap.add_argument("--run-dir", default=None, help="pipeline run folder (default runs/bench[-mpnet]-<mode>; cached)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/sst2[-mpnet]-<mode>.json)")
    ap.add_argument("--md", default=None, help="the Markdown table (default benchmarks/RESULTS.md for the flagship's "
                                               "full mode, RESULTS-mpnet.md for MPNet's, else RESULTS[-mpnet]-<mode>.md)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override on top of the mode's (a variant of the flagship: give it its own --out "
                         "and --md), e.g. stages.1.prune.budget.params=0.35")
    args = ap.parse_args()
    spec = bench_spec(args.teacher, args.mode)
    unknown = [v for v in args.students if v not in TEACHERS[args.teacher]["students"]]
    if unknown:
        raise SystemExit(f"--students {unknown}: the {args.teacher} teacher's are {sorted(TEACHERS[args.teacher]['students'])}")
    overrides = [*spec["overrides"], *args.set]
    stem = "sst2" if args.teacher == "minilm" else f"sst2-{args.teacher}"
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench{stem.removeprefix('sst2')}-{args.mode}")
    out = Path(args.out or HERE / "results" / f"{stem}-{args.mode}.json")
    started = datetime.datetime.now(datetime.timezone.utc)
    launched = commit()  # the code that runs: a commit made during the hours of the run is not it
    # the recipe's student first (its accuracy is the one the targets read, known before the other students' hours),
    # then the other students; the run folder's own report and manifest are then written again for the recipe's
    pipe = run_pipeline(args.mode, args.data, run_dir, args.set, args.teacher)
    variants = {v: run_pipeline(args.mode, args.data, run_dir, args.set, args.teacher, v) for v in args.students}
    if variants:
        from edgekd.report.run_summary import write_run_outputs

        write_run_outputs(pipe.run_dir, pipe.recipe, pipe.artifacts, data=pipe.ctx.data.checks)
    paths, facts = build_systems(pipe, run_dir / "bench", args.mode, spec, variants)
    systems, correct = measure(pipe, paths, spec, variants, facts)
    for name, f in facts.items():
        systems[name]["built_with"] = {k: v for k, v in f.items() if k != "htp"}  # the row has the HTP's results
    for name in systems:
        if name.startswith("edgekd-"):
            systems[name]["stages"] = edgekd_stages(_pipe_of(name, pipe, variants))
    host = host_facts()
    peer, teacher = systems["peer-teacher-dynamic-int8"], systems["teacher-fp32"]
    host["int8_case"] = {  # which kind of machine this is for INT8: the peer's own dynamic INT8 over FP32
        "peer_dynamic_int8_speedup_vs_teacher_fp32_seq128_t1":
            teacher["latency_ms"]["seq128_t1"]["p50"] / peer["latency_ms"]["seq128_t1"]["p50"]}
    result = {"benchmark": f"{stem}-{args.mode}", "teacher": args.teacher, "mode": args.mode, "systems": systems,
              "ratios": ratios(systems), "machine": host, "versions": versions(), "commit": launched,
              **({"commit_at_end": ended} if (ended := commit()) != launched else {}),
              "date": started.strftime("%Y-%m-%d"), "started": started.isoformat(timespec="seconds"),
              "wall_s": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
              "protocol": {"rounds": spec["rounds"], "runs": spec["runs"], "warmup": 10, "batch": 1,
                           "natural_max_examples": spec["natural_max"],
                           "throughput": "batch 32, seq 128, 2 threads" if spec["throughput"]
                           else "not measured in this mode",
                           **({} if spec["torch_peer"] else {"peer-torch-dynamic-int8": "not measured in this mode"}),
                           "test_examples": len(pipe.ctx.encoded("test"))},
              "recipe": f"recipes/{spec['recipe']}" + (f" with {overrides}" if overrides else ""),
              "students": {v: TEACHERS[args.teacher]["students"][v] for v in args.students},
              "accuracy_intervals": paired_intervals(correct)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from .report_md import write_results_md

    md_name = "RESULTS" + stem.removeprefix("sst2") + ("" if args.mode == "full" else f"-{args.mode}") + ".md"
    md = Path(args.md or HERE / md_name)
    write_results_md(result, out, md)
    print(f"wrote {out} and {md} in {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
