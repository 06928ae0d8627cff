"""Families other than BERT, as tiny random models built from transformers configs: what models/families.py knows
of them. (Each family through the whole pipeline is still to come.)"""
from __future__ import annotations

import torch

from conftest import write_tiny_encoder
from edgekd.configs import StudentConfig
from edgekd.models.hf import load_hf_classifier
from edgekd.models.spec import architecture_summary, build_model, hidden_width, make_spec
from edgekd.models.students import build_student

TASK = "text-classification"


def test_electra_reports_its_hidden_width_not_its_narrower_embedding_width(tmp_path):
    model, _, _ = load_hf_classifier(str(write_tiny_encoder(tmp_path / "e", "electra", embedding_size=16)), TASK,
                                     ["0", "1"])
    assert model.get_input_embeddings().embedding_dim == 16
    assert hidden_width(model) == 32 and architecture_summary(model)["hidden"] == 32


def test_a_modernbert_layers_student_cuts_its_per_layer_config_and_rebuilds_from_its_spec(tmp_path):
    folder = write_tiny_encoder(tmp_path / "m", "modernbert", num_hidden_layers=3, global_attn_every_n_layers=2)
    teacher, _, _ = load_hf_classifier(str(folder), TASK, ["0", "1"])
    types = list(teacher.config.layer_types)
    assert len(types) == 3 and len(set(types)) == 2  # global and local attention layers
    student, base = build_student(StudentConfig(kind="layers", layers=[1, 2]), teacher, {"family": "hf"}, TASK, 2)
    assert student.config.layer_types == types[1:] and student.config.num_hidden_layers == 2
    rebuilt = build_model(make_spec(student, base))
    rebuilt.load_state_dict(student.state_dict())
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(input_ids=ids).logits, student.eval()(input_ids=ids).logits)
