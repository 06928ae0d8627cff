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
    result = Pipeline(validate_recipe(r)).run()["distill"]
    assert result["train"]["steps"] > 0 and result["test_accuracy"] > 0.5
    r2 = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "cnn")
    r2["student"] = {"kind": "cnn", "channels": [8]}
    r2["stages"] = [{"distill": distill}]
    with pytest.raises(EdgekdError, match="CNN student has no hidden states"):
        Pipeline(validate_recipe(r2)).run()
