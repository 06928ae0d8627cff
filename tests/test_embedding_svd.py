"""`student.init_embeddings_from_teacher: svd`: a text CNN or BiLSTM starts from the teacher's token embeddings reduced
to `embedding_dim` columns (the nearest rank-k table), so that its table, most of its size, is smaller than the
teacher's; refused before any training where it cannot apply."""
from __future__ import annotations

import pytest
import torch

from conftest import reuse_stages, tiny_text_recipe
from edgekd.configs import StudentConfig
from edgekd.errors import EdgekdError
from edgekd.models.students import build_student
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe


def _teacher(width: int = 24, vocab: int = 50):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("kind", ["cnn", "bilstm"])
def test_the_table_is_the_nearest_rank_k_one_to_the_teachers(kind):
    teacher = _teacher()
    e = teacher.get_input_embeddings().weight.detach()
    cfg = StudentConfig(kind=kind, channels=[8], lstm_hidden=8, embedding_dim=10, init_embeddings_from_teacher="svd")
    student, base = build_student(cfg, teacher, {"family": "hf"}, "text-classification", 2)
    table = student.embeddings.weight.detach()
    assert table.shape == (50, 10)
    # Eckart-Young: mapped back through its 10 directions, the table misses the teacher's by exactly the dropped
    # singular values, the least any 10-column table can
    _, s, vh = torch.linalg.svd(e, full_matrices=False)
    assert torch.allclose(table @ vh[:10], e - (e @ vh[10:].T) @ vh[10:], atol=1e-5)
    assert torch.linalg.norm(e - table @ vh[:10]).item() == pytest.approx(torch.sqrt((s[10:] ** 2).sum()).item(),
                                                                            rel=1e-4)
    # copied at the teacher's width: the same rows, and a BiLSTM then projects them down to embedding_dim
    copied, copied_base = build_student(cfg.model_copy(update={"init_embeddings_from_teacher": True}), teacher,
                                        {"family": "hf"}, "text-classification", 2)
    assert torch.equal(copied.embeddings.weight.detach(), e)
    if kind == "bilstm":
        assert base["rnn_config"]["projection_dim"] is None and copied_base["rnn_config"]["projection_dim"] == 10


def test_svd_is_refused_where_it_cannot_apply(tmp_path, tiny_bert_dir, text_data_dir):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    with pytest.raises(Exception, match="a layers student keeps the teacher's family"):
        validate_recipe({**r, "student": {"kind": "layers", "init_embeddings_from_teacher": "svd"}})
    # the teacher's table is 32 wide: nothing to reduce at 32; refused before the teacher is fine-tuned
    r["student"] = {"kind": "cnn", "channels": [8], "embedding_dim": 32, "init_embeddings_from_teacher": "svd"}
    pipe = Pipeline(validate_recipe(r))
    with pytest.raises(EdgekdError, match="32-wide token embeddings .* embedding_dim is 32: give a width under 32"):
        pipe.run()
    assert not (tmp_path / "run" / "stages").exists()


def test_an_image_recipe_refuses_svd(tmp_path):
    from conftest import tiny_image_recipe

    r = tiny_image_recipe(tmp_path / "img")
    r["student"] = {**r["student"], "init_embeddings_from_teacher": "svd"}
    with pytest.raises(Exception, match="an image CNN has none"):
        validate_recipe(r)


def test_a_cnn_on_an_svd_table_distils_reloads_and_exports(tmp_path, tiny_bert_dir, text_data_dir, text_run):
    from edgekd.models.spec import load_model_from_artifact

    out = tmp_path / "run"
    reuse_stages(text_run[0] / "out", out, ("teacher",))  # the session run's teacher: only the student trains
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, out)
    r["student"] = {"kind": "cnn", "channels": [16], "embedding_dim": 12, "init_embeddings_from_teacher": "svd"}
    r["stages"] = [r["stages"][0], r["stages"][3]]  # distill, export
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()
    distilled = next(a for a in pipe.artifacts if a.stage == "distill")
    assert load_model_from_artifact(distilled).embeddings.weight.shape[1] == 12  # reloads at its width
    assert result["distill"]["test_accuracy"] > 0.5
    assert result["export"]["validation"]["failures"] == []
