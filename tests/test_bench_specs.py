"""The SST-2 benchmark's recipes (benchmarks/sst2.py): every teacher, mode and further student builds a recipe edgekd
accepts, and the large teacher's report judges the shipped model by its own targets."""
import json

import pytest

from benchmarks.report_md import target_rows
from benchmarks.sst2 import TEACHERS, bench_recipe, npu_builds, bench_spec

CASES = [(t, m, s) for t, v in TEACHERS.items() for m in v["modes"] for s in [None, *v["students"]]]


@pytest.mark.parametrize("teacher,mode,student", CASES, ids=[f"{t}-{m}-{s or 'recipe'}" for t, m, s in CASES])
def test_every_benchmark_recipe_validates_with_its_npu_builds_and_student(tmp_path, teacher, mode, student):
    recipe = bench_recipe(mode, str(tmp_path / "sst2"), tmp_path / "run", [], teacher, student)
    spec = bench_spec(teacher, mode)
    stages = {e.name: e.config for e in recipe.stages}
    assert "profile" not in stages  # the benchmark measures every system itself
    assert recipe.profiles == ["host-cpu", *spec["npu_builds"]]
    assert stages["export"].devices == list(spec["npu_builds"])
    if student is None:
        own = {"minilm": "layers", "mpnet": "pretrained"}[teacher]
        assert recipe.student.kind == own
    else:
        other = TEACHERS[teacher]["students"][student]
        assert recipe.student.model_dump(include=set(other["student"])) == other["student"]
        for stage in ("distill", "prune"):
            assert stages[stage].model_dump(include=set(other[stage]), exclude_none=True) == other[stage]
        assert stages["export"].npu_fallback == "allow"  # its NPU row says where the HTP left nodes to the CPU


def test_npu_builds_of_further_students_are_named_after_them():
    spec = bench_spec("mpnet", "quick")
    assert npu_builds(spec, {"cnn-wide": None}) == {"edgekd-npu-w8a16": ("hexagon-npu-w8a16", None),
                                                     "edgekd-cnn-wide-npu-w8a16": ("hexagon-npu-w8a16", "cnn-wide")}


def _result(accuracy: float, teacher_accuracy: float, speedup: float, peer: float, size_mb: float) -> dict:
    return {"teacher": "mpnet", "systems": {"edgekd-int8": {"accuracy": accuracy, "size_mb": size_mb}},
            "ratios": {"edgekd-int8": {"accuracy_kept": accuracy / teacher_accuracy, "smaller_than_teacher": 438 / size_mb,
                                       "speedup_vs_teacher_seq128_t1": speedup,
                                       "speedup_vs_peer_dynamic_seq128_t1": peer, "noise_seq128_t1": 0.2}}}


def test_the_large_teachers_targets_compare_with_the_flagships_shipped_model(tmp_path):
    rows = target_rows(_result(0.90, 0.93, 41.0, 17.5, 7.3), tmp_path)
    assert "no sst2-full.json" in rows[1]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sst2-full.json").write_text(json.dumps({"systems": {"edgekd-int8": {"accuracy": 0.8842}}}))
    rows = target_rows(_result(0.90, 0.93, 41.0, 17.5, 7.3), tmp_path)
    assert rows[0] == "| accuracy kept vs teacher-fp32 | ≥ 98.5% | 96.8% | — |"
    assert "(88.42%, sst2-full.json) | ≥ +1 point | +1.58 points" in rows[1]
    assert "| ≥ 50× | 41.00× | ±20% |" in rows[2]
    assert "| ≥ 20× | 17.50× |" in rows[3]
    assert rows[4] == "| smaller than teacher-fp32 | ≥ 50× | 60.00× (7.30 MB) | — |"


def test_the_npu_table_lists_the_qnn_ptq_baseline_after_edgekds_builds_and_says_what_it_is():
    from benchmarks.report_md import npu_lines
    from benchmarks.sst2 import npu_peers

    assert npu_peers(bench_spec("minilm", "full")) == {"peer-npu-qnn-ptq-w8a8": "hexagon-npu",
                                                       "peer-npu-qnn-ptq-w8a16": "hexagon-npu-w8a16"}
    est = {"device_b1_t1": {"p50": 1.0, "seq_len": 128, "estimated": True, "device": "hexagon-npu"}}

    def row(accuracy, cpu_nodes):
        return {"accuracy": accuracy, "agreement": 0.9, "agreement_with_pytorch": 0.95, "examples": 872,
                "simulated": {"accuracy": accuracy}, "latency_ms": est, "accuracy_by": "onnxruntime-qnn (HTP v75)",
                "placement": {"htp_nodes": 390, "cpu_nodes": cpu_nodes, "partitions": 1 + cpu_nodes,
                              "cpu_ops": {"Gather": cpu_nodes} if cpu_nodes else {}}}

    lines = npu_lines({"peer-npu-qnn-ptq-w8a8": row(0.80, 1), "edgekd-npu-w8a8": row(0.88, 0), "teacher-fp32": {}})
    table = [x for x in lines if x.startswith("| edgekd-") or x.startswith("| peer-")]
    assert table[0].startswith("| edgekd-npu-w8a8 | all 390 nodes on the HTP, 1 partition(s) | 88.00 |")
    assert table[1].startswith("| peer-npu-qnn-ptq-w8a8 | 1 nodes on the CPU (Gather), 390 on the HTP, 2 partition(s) "
                               "| 80.00 |")
    assert any("onnxruntime's own QNN recipe applied to edgekd's pruned FP32 student" in x for x in lines)


def test_the_large_teachers_quick_mode_skips_the_batch_32_case_and_the_torch_peer_and_the_others_keep_them():
    from benchmarks.sst2 import host_profile

    assert bench_spec("mpnet", "quick")["throughput"] is False and bench_spec("mpnet", "quick")["torch_peer"] is False
    others = [bench_spec(t, m) for t in TEACHERS for m in TEACHERS[t]["modes"] if (t, m) != ("mpnet", "quick")]
    assert all(spec["throughput"] and spec["torch_peer"] for spec in others)
    assert host_profile(False).batch_sizes == [1] and host_profile().batch_sizes == [1, 32]


def test_an_npu_build_run_on_part_of_the_split_leaves_the_paired_intervals_rather_than_lend_them_the_simulation():
    import numpy as np

    from benchmarks.sst2 import _htp_answers

    simulated = np.array([True, False, True])
    correct = {"edgekd-npu-w8a16": simulated, "peer-npu-qnn-ptq-w8a16": simulated}
    _htp_answers(correct, "edgekd-npu-w8a16", {"placement": {}}, None)  # the HTP ran on 150 of 872 sentences
    assert "edgekd-npu-w8a16" not in correct
    on_htp = np.array([True, True, False])
    _htp_answers(correct, "peer-npu-qnn-ptq-w8a16", {"placement": {}}, on_htp)
    assert correct["peer-npu-qnn-ptq-w8a16"] is on_htp
    correct["edgekd-npu-w8a8"] = simulated
    _htp_answers(correct, "edgekd-npu-w8a8", {"accuracy_by": "a simulation"}, None)  # no onnxruntime-qnn: labelled so
    assert correct["edgekd-npu-w8a8"] is simulated
