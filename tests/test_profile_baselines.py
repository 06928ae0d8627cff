"""PTQ baselines in the profile stage: onnxruntime's quantize_dynamic / quantize_static of the final model's FP32
export, measured like the shipped models and labelled as baselines in the results and the reports."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import yaml

from conftest import reuse_stages
from edgekd.pipeline import Pipeline
from edgekd.profile.baselines import BASELINES
from edgekd.recipe import validate_recipe
from edgekd.report.html import write_reports

PROFILE = {"runs": 5, "rounds": 1, "warmup": 1, "natural_lengths": False}


def _run(recipe: dict) -> tuple[Pipeline, dict]:
    pipe = Pipeline(validate_recipe(recipe))
    return pipe, pipe.run()


def _rerun_profile(ptq_run, tmp_path, profile: dict) -> tuple[Path, Pipeline, dict]:
    """The fixture's run copied, then run again with another profile config: the earlier stages come from the
    copy's cache, only the profile stage runs."""
    out, recipe, _, _ = ptq_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    pipe, result = _run({**recipe, "output": str(copy), "stages": [*recipe["stages"][:-1], {"profile": profile}]})
    return copy, pipe, result


@pytest.fixture(scope="module")
def ptq_run(tmp_path_factory, text_run):
    """The session's tiny text run (its export ships INT8 and keeps model-fp32.onnx: int8_min_speedup 0), its profile
    stage run again with one round: every earlier stage comes from the copied cache."""
    out = tmp_path_factory.mktemp("ptq-run") / "out"
    reuse_stages(text_run[0] / "out", out, ("teacher", "distill", "prune", "qat", "export"))
    recipe = yaml.safe_load(text_run[1].read_text())
    recipe = {**recipe, "output": str(out), "stages": [*recipe["stages"][:-1], {"profile": PROFILE}]}
    pipe, result = _run(recipe)
    return out, recipe, pipe, result


@pytest.mark.slow
def test_profile_builds_and_measures_both_ptq_baselines(ptq_run, tmp_path):
    out, _, pipe, result = ptq_run
    systems = result["summary"]["systems"]
    export, profile = pipe.artifacts[-2], pipe.artifacts[-1]
    for name, tool in BASELINES.items():
        m = systems[name]
        assert m["baseline"] == tool and "error" not in m
        assert 0.0 <= m["accuracy"] <= 1.0 and m["examples"] == systems["final"]["examples"]
        assert 0.0 <= m["agreement"] <= 1.0  # with the teacher's FP32 export
        assert m["size_mb"] > 0 and m["params"] == systems["final-fp32"]["params"]
        t1 = m["latency_ms"]["host-cpu"]["seq128_t1"]
        assert t1["p50"] > 0 and not t1.get("estimated")
        assert set(m["latency_ms"]["host-cpu"]) == set(systems["final"]["latency_ms"]["host-cpu"])
        # written into the profile stage's own folder, never into the export artifact
        assert m["file"] == f"baselines/{name}.onnx" and m["artifact"] == profile.id
        assert (profile.path / m["file"]).is_file() and not (export.path / m["file"]).exists()
        assert m["quantization"]["built_from"] == "model-fp32.onnx" and m["quantization"]["per_channel"]
    assert systems["ptq-static"]["quantization"]["calibration_examples"] == 128
    for name in ("teacher-fp32", "final-fp32", "final"):  # shipped and reference models are not baselines
        assert "baseline" not in systems[name]
    assert not (out / "ptq-static.onnx").exists()  # not shipped next to model.onnx
    report = (out / "report.md").read_text()
    assert "| ptq-dynamic — PTQ baseline (onnxruntime quantize_dynamic) |" in report
    assert "| ptq-static — PTQ baseline (onnxruntime quantize_static (QDQ, MinMax)) |" in report
    res = write_reports([out], tmp_path / "report.html")
    page = res["html"].read_text()
    assert "PTQ baseline (onnxruntime quantize_dynamic)" in page
    assert "PTQ baseline (onnxruntime quantize_static (QDQ, MinMax))" in page
    assert "agreement with teacher %" in page and "tiny-text/ptq-static" in page
    md = res["markdown"].read_text()
    assert "tiny-text/ptq-dynamic — PTQ baseline (onnxruntime quantize_dynamic)" in md
    rows = {(r["model"], r["device"]): r for r in res["recommendation"]["candidates"]}
    assert rows[("ptq-static", "host-cpu")]["baseline"] == "PTQ baseline (onnxruntime quantize_static (QDQ, MinMax))"
    assert rows[("final", "host-cpu")]["baseline"] is None
    assert rows[("ptq-dynamic", "host-cpu")]["agreement"] == systems["ptq-dynamic"]["agreement"]


@pytest.mark.slow
def test_a_baseline_onnxruntime_cannot_build_is_an_error_and_the_stage_completes(ptq_run, tmp_path, monkeypatch):
    import onnxruntime.quantization as ortq

    def broken(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(ortq, "quantize_static", broken)
    out, pipe, result = _rerun_profile(ptq_run, tmp_path, {**PROFILE, "warmup": 2})
    systems = result["summary"]["systems"]
    assert systems["ptq-static"] == {"baseline": BASELINES["ptq-static"],
                                     "error": "RuntimeError: calibration exploded", "built_from": "model-fp32.onnx"}
    assert not (pipe.artifacts[-1].path / "baselines" / "ptq-static.onnx").exists()
    assert systems["ptq-dynamic"]["latency_ms"]["host-cpu"]["seq128_t1"]["p50"] > 0  # the other one still measured
    assert systems["final"]["latency_ms"]["host-cpu"]["seq128_t1"]["p50"] > 0
    report = (out / "report.md").read_text()
    assert "ptq-static — PTQ baseline (onnxruntime quantize_static (QDQ, MinMax)): not built " \
           "(RuntimeError: calibration exploded)" in report
    page = write_reports([out], tmp_path / "report.html")["html"].read_text()
    assert "not built — RuntimeError: calibration exploded" in page


@pytest.mark.slow
def test_ptq_baselines_can_be_switched_off(ptq_run, tmp_path):
    _, _, result = _rerun_profile(ptq_run, tmp_path, {**PROFILE, "ptq_baselines": False})
    systems = result["summary"]["systems"]
    assert not set(BASELINES) & set(systems) and {"teacher-fp32", "final-fp32", "final"} <= set(systems)


def test_a_baseline_is_shown_but_never_recommended():
    from test_report_html import DEVICES, summary

    from edgekd.report.recommend import recommend

    s = summary(estimated_pi=False)
    final = s["systems"]["final"]
    # smaller and faster than the shipped model: the rule would pick it, were it not a baseline
    s["systems"]["ptq-dynamic"] = {**final, "size_mb": final["size_mb"] / 2, "baseline": BASELINES["ptq-dynamic"]}
    s["systems"]["ptq-static"] = {"baseline": BASELINES["ptq-static"], "error": "RuntimeError: no"}
    rec = recommend([s], max_latency_ms=10, devices=DEVICES)
    assert rec["choice"]["model"] == "final" and rec["qualifying"] == rec["eligible"] == 3
    row = next(c for c in rec["candidates"] if c["model"] == "ptq-dynamic")
    assert row["baseline"] == "PTQ baseline (onnxruntime quantize_dynamic)" and not row["failures"]
    assert "ptq-static" not in {c["model"] for c in rec["candidates"]}  # not built: no row, a note instead


# An MPNet run whose static PTQ baseline builds but cannot run: test_families.py (MPNet's whole-pipeline run).


@pytest.mark.slow
def test_a_baseline_that_builds_but_does_not_run_is_recorded_and_the_stage_completes(ptq_run, tmp_path, monkeypatch):
    import edgekd.profile.stage as stage

    real = stage.scored_logits

    def fails_for_static(path, *args, **kwargs):
        if path.name == "ptq-static.onnx":
            raise RuntimeError("Gather: indices element out of data bounds, idx=-9223372036854775808")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stage, "scored_logits", fails_for_static)
    out, pipe, result = _rerun_profile(ptq_run, tmp_path, {**PROFILE, "warmup": 3})  # another key: the stage runs
    static = result["summary"]["systems"]["ptq-static"]
    assert static["failed_at"] == "run" and static["error"].startswith("RuntimeError: Gather: indices element")
    assert static["file"] == "baselines/ptq-static.onnx" and "latency_ms" not in static
    assert result["summary"]["systems"]["ptq-dynamic"]["latency_ms"]["host-cpu"]["seq128_t1"]["p50"] > 0
    report = (out / "report.md").read_text()
    assert "ptq-static — PTQ baseline (onnxruntime quantize_static (QDQ, MinMax)): built, does not run " \
           "(RuntimeError: Gather: indices element" in report
    page = write_reports([out], tmp_path / "report.html")["html"].read_text()
    assert "built, does not run — RuntimeError: Gather" in page
