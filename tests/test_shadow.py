"""`edgekd shadow`: the shipped student beside its teacher on unlabelled inputs, with input drift (issue 11, item 6)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_text_recipe
from edgekd.cli import app
from edgekd.data.drift import drift, drift_reference
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (5000, 2))
    lengths = rng.integers(5, 40, 5000)
    ref = drift_reference(logits, lengths)
    same = drift(ref, rng.normal(0, 2, (2000, 2)), rng.integers(5, 40, 2000))
    assert same["teacher_confidence"]["psi"] < 0.05 and same["length"]["reading"] == "stable"
    # longer inputs, and a teacher far less sure of them
    moved = drift(ref, rng.normal(0, 0.2, (2000, 2)), rng.integers(60, 90, 2000))
    assert moved["length"]["psi"] > 1 and moved["length"]["reading"] == "large shift"
    assert moved["teacher_confidence"]["psi"] > 0.25 and moved["length"]["mean"] > 60


@pytest.mark.slow
@pytest.mark.parametrize("vocabulary", ["nearest", "fallback"])
def test_shadow_runs_student_and_teacher_on_new_inputs_and_writes_what_to_redistil(
        tmp_path, tiny_bert_dir, text_data_dir, vocabulary):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["stages"] = [r["stages"][0], r["stages"][3]]  # distill, export (with teacher.onnx)
    r["stages"][1]["export"]["vocabulary"] = vocabulary
    pipe = Pipeline(validate_recipe(r))
    pipe.run()
    export = next(a for a in pipe.artifacts if a.stage == "export")
    assert (export.path / "drift-reference.json").is_file()
    # teacher.onnx needs a tokenizer of its own only where the student's ids were renumbered
    assert (export.path / "teacher-tokenizer").is_dir() == (vocabulary == "fallback")
    traffic = tmp_path / "traffic.txt"
    lines = [f"the {w} film was {v} and very {u}" for w, v, u in
             zip(["plot", "story", "acting"] * 10, ["good", "awful", "dull"] * 10, ["superb", "bad", "fun"] * 10)]
    traffic.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "shadow"
    # --hard-confidence 1: every input counts as hard (the teacher is never fully sure), so the feedback runs
    result = CliRunner().invoke(app, ["shadow", str(tmp_path / "run"), str(traffic), "--out", str(out),
                                      "--hard-confidence", "1.0"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "shadow.json").read_text())
    assert s["examples"] == 30 and s["export"] == str(export.path)
    rows = [json.loads(x) for x in (out / "shadow-disagreements.jsonl").read_text().splitlines()]
    assert len(rows) == s["disagreements"] == round((1 - s["agreement"]) * 30)
    assert all(r["student"] != r["teacher"] and r["text"] in lines for r in rows)
    hard = (out / "shadow-hard.txt").read_text().splitlines()
    assert len(hard) == s["hard_inputs"] == 30
    # these inputs are longer than the task's sentences (2-10 words): the length has drifted
    assert s["drift"]["length"]["mean"] > s["drift"]["length"]["reference_mean"]
    assert s["drift"]["length"]["psi"] > 0.25
    # the hard inputs feed the next run's transfer set
    r2 = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    kd = r2["stages"][0]["distill"]
    r2["stages"] = [{"distill": {**kd, "epochs": 1, "transfer": {"unlabelled": [str(out / "shadow-hard.txt")]}}}]
    report = Pipeline(validate_recipe(r2)).run()["distill"]["train"]["transfer_set"]
    assert report["unlabelled_texts"] == 30


def test_shadow_refuses_a_folder_without_a_teacher(tmp_path):
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["shadow", str(tmp_path), str(tmp_path / "in.txt")])
    assert result.exit_code == 2 and "holds no teacher.onnx" in result.output
