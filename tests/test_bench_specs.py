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
        wanted, distill = TEACHERS[teacher]["students"][student]
        assert recipe.student.model_dump(include=set(wanted)) == wanted
        for key, value in distill.items():
            assert getattr(stages["distill"], key) == value
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
