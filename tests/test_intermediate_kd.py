"""Intermediate-layer distillation: hidden-state MSE and attention KL against a live teacher (issue 11, part)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_text_recipe
from edgekd.errors import EdgekdError
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe
from edgekd.train.losses import AttentionKL, HiddenStateMSE, Outputs, uniform_layer_map


def test_uniform_layer_map_puts_the_last_student_layer_on_the_last_teacher_layer():
    assert uniform_layer_map(2, 6) == [2, 5]  # the flagship's student, layers [2, 5] of MiniLM-L6
    assert uniform_layer_map(3, 6) == [1, 3, 5]
    assert uniform_layer_map(4, 4) == [0, 1, 2, 3]


def _outputs(seed, layers=2, heads=2, mask=None):
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(layers + 1))
    att = tuple(torch.softmax(torch.randn(2, heads, 5, 5, generator=g), -1) for _ in range(layers))
    return Outputs(torch.zeros(2, 2), hidden, att, mask if mask is not None else torch.ones(2, 5, dtype=torch.long))


def test_intermediate_terms_are_zero_for_identical_outputs_and_positive_otherwise():
    a, b = _outputs(0), _outputs(1)
    for term in (HiddenStateMSE([0, 1]), AttentionKL([0, 1])):
        assert term(a, a, None).item() == pytest.approx(0.0, abs=1e-6)
        assert term(a, b, None).item() > 0


def test_padded_tokens_do_not_count():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    a, b = _outputs(0, mask=mask), _outputs(0, mask=mask)
    b.hidden_states = tuple(h.clone() for h in b.hidden_states)
    for h in b.hidden_states:
        h[0, 3:] += 100.0  # only the padded positions of the first text differ
    assert HiddenStateMSE([0, 1])(a, b, None).item() == pytest.approx(0.0, abs=1e-6)


def test_a_run_with_hidden_and_attention_kd_trains_and_a_cnn_student_is_refused(tmp_path, tiny_bert_dir, text_data_dir):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    distill = {**r["stages"][0]["distill"], "hidden_weight": 1.0, "attention_weight": 1.0, "epochs": 2}
    r["stages"] = [{"distill": distill}]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()["distill"]
    assert result["train"]["steps"] > 0 and result["test_accuracy"] > 0.5
    transfer = result["transfer"]  # what transferred, on test: calibration of both, per class, disagreements
    assert transfer["agreement"] == result["test_agreement"] and 0 <= transfer["ece"] <= 1
    art = next(a for a in pipe.artifacts if a.stage == "distill")
    lines = (art.path / "disagreements-test.jsonl").read_text().splitlines()
    assert len(lines) == transfer["disagreements"]
    r2 = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "cnn")
    r2["student"] = {"kind": "cnn", "channels": [8]}
    r2["stages"] = [{"distill": distill}]
    with pytest.raises(EdgekdError, match="CNN student has no hidden states"):
        Pipeline(validate_recipe(r2)).run()


def test_transfer_report_has_calibration_per_class_accuracy_and_the_disagreements(tmp_path):
    import json

    import numpy as np

    from edgekd.train.transfer import expected_calibration_error, transfer_report

    labels = np.array([0, 1, 1, 0])
    confident_right = np.array([[9.0, 0], [0, 9.0], [0, 9.0], [9.0, 0]])
    confident_wrong = confident_right[:, ::-1].copy()
    assert expected_calibration_error(confident_right, labels) < 0.01
    assert expected_calibration_error(confident_wrong, labels) > 0.99
    student = confident_right.copy()
    student[2] = [2.0, 0.0]  # wrong, and disagrees with the teacher
    r = transfer_report(student, confident_right, labels, ["neg", "pos"], ["a", "b", "c", "d"], tmp_path / "d.jsonl")
    assert r["accuracy"] == 0.75 and r["teacher_accuracy"] == 1.0 and r["agreement"] == 0.75
    assert r["per_class_accuracy"] == {"neg": 1.0, "pos": 0.5} and r["disagreements"] == 1
    line = json.loads((tmp_path / "d.jsonl").read_text())
    assert line["text"] == "c" and line["label"] == "pos" and line["student"] == "neg" and line["teacher"] == "pos"
    assert 0.5 < line["student_confidence"] < 1 and line["teacher_confidence"] > 0.99
