"""A pretrained student with its own tokenizer: a tiny BERT teacher (WordPiece) distilled into a tiny RoBERTa
(byte-level BPE, another vocabulary and width) through every stage; intermediate terms across tokenizers that cut
the texts differently refused (tests/test_token_alignment.py: across tokenizers that cut them alike)."""
from __future__ import annotations

import json

import pytest

from conftest import reuse_stages, tiny_text_recipe, write_tiny_bpe_encoder
from edgekd.errors import EdgekdError
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe


def _recipe(tiny_bert_dir, text_data_dir, student_dir, out):
    recipe = tiny_text_recipe(tiny_bert_dir, text_data_dir, out)
    recipe["student"] = {"kind": "pretrained", "path": str(student_dir), "layers": [1]}
    return recipe


@pytest.mark.slow
def test_a_pretrained_student_with_its_own_tokenizer_learns_from_the_teachers_logits_and_ships_its_tokenizer(
        text_run, tiny_bert_dir, text_data_dir, tmp_path):
    from transformers import AutoTokenizer

    student_dir = write_tiny_bpe_encoder(tmp_path / "roberta")
    out = tmp_path / "run"
    reuse_stages(text_run[0] / "out", out, ("teacher",))  # the same teacher, data and seed: from the cache
    recipe = _recipe(tiny_bert_dir, text_data_dir, student_dir, out)
    recipe["stages"][0]["distill"]["transfer"] = {"augment": {"copies": 1}}  # made in the teacher's tokens
    recipe["stages"][0]["distill"]["epochs"] = 6
    recipe["profiles"] = ["host-cpu", "hexagon-npu"]
    recipe["stages"][3]["export"].update(devices=["hexagon-npu"], device_min_agreement=0.8, htp_examples=8)
    recipe["stages"][4]["profile"].update(rounds=1, natural_lengths=False, ptq_baselines=False)
    result = Pipeline(validate_recipe(recipe)).run()

    distill = result["distill"]
    assert distill["student_pretrained"]["layers_kept"] == [1] and distill["student_pretrained"]["layers_of"] == 2
    assert "teacher's tokenizer" in distill["student_pretrained"]["tokenizer"]
    assert distill["train"]["transfer_set"]["augmented"] > 0 and "student_tokenizer" in distill["train"]["transfer_set"]
    # the RoBERTa's own architecture (24 wide, 4 heads of 6), one of its layers, pruned
    assert result["prune"]["before"]["hidden"] == 24 and result["prune"]["before"]["heads_per_layer"] == [4]
    assert result["prune"]["after"]["heads_per_layer"] == [3]
    s = result["summary"]
    teacher = s["systems"]["teacher-fp32"]["accuracy"]
    # teacher.onnx read the texts with the teacher's own tokenizer: it scores what the PyTorch teacher scored
    assert teacher == pytest.approx(s["teacher_accuracy_pytorch"], abs=0.02) and teacher > 0.8
    assert s["systems"]["final"]["accuracy"] > 0.75 and s["export_validation"]["failures"] == []
    assert (out / "devices" / "hexagon-npu" / "model.onnx").is_file()
    # the shipped tokenizer is the student's BPE; the teacher's travels beside it for `edgekd shadow`
    shipped, student = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(student_dir))
    assert shipped("a lovely film")["input_ids"] == student("a lovely film")["input_ids"]
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    (export,) = (out / "stages").glob("*-export-*")
    assert json.loads((export / "manifest.json").read_text())["shadow"]["teacher_tokenizer"] == "teacher-tokenizer"
    teacher_tok = json.loads((export / "teacher-tokenizer" / "tokenizer.json").read_text())
    assert teacher_tok["model"]["type"] == "WordPiece"


@pytest.mark.slow
def test_student_finetune_trains_the_student_on_the_labels_and_distillation_starts_from_it(
        text_run, tiny_bert_dir, text_data_dir, tmp_path):
    student_dir = write_tiny_bpe_encoder(tmp_path / "roberta")
    out = tmp_path / "run"
    reuse_stages(text_run[0] / "out", out, ("teacher",))
    recipe = _recipe(tiny_bert_dir, text_data_dir, student_dir, out)
    recipe["student"]["finetune"] = {"epochs": 6, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0,
                                     "max_train_examples": 200}
    # a learning rate too small to move it: what the distilled student scores is what the warm start gave it
    recipe["stages"] = [{"distill": {**recipe["stages"][0]["distill"], "epochs": 1, "lr": 1e-7}}]
    result = Pipeline(validate_recipe(recipe)).run()

    warm, distill = result["distill"]["student_finetune"], result["distill"]
    assert warm["train"]["examples"] == 200 and warm["train"]["epochs"] == 6
    assert warm["dev_accuracy"] > 0.8  # a fresh head on a pretrained encoder scores about half on this task
    assert distill["dev_accuracy"] == pytest.approx(warm["dev_accuracy"], abs=0.05)
    assert distill["test_accuracy"] == pytest.approx(warm["test_accuracy"], abs=0.05)
    assert not (out / "work").exists() or not any((out / "work").iterdir())  # its checkpoints went with the stage's


def test_student_finetune_stays_out_of_the_cache_key_unless_set():
    from edgekd.configs import StudentConfig

    assert "finetune" not in StudentConfig(kind="layers").model_dump(mode="json")
    assert StudentConfig(kind="layers", finetune={"epochs": 1}).model_dump(mode="json")["finetune"]["epochs"] == 1


def test_intermediate_terms_across_tokenizers_are_refused_before_any_work(tiny_bert_dir, text_data_dir, tmp_path):
    recipe = _recipe(tiny_bert_dir, text_data_dir, write_tiny_bpe_encoder(tmp_path / "roberta"), tmp_path / "run")
    recipe["stages"][0]["distill"]["hidden_weight"] = 1.0
    recipe["stages"][2]["qat"]["attention_weight"] = 1.0
    with pytest.raises(EdgekdError, match=r"stages.0.distill: hidden_weight.*tokenizer of its own.*stages.2.qat: "):
        Pipeline(validate_recipe(recipe)).run()
    assert not (tmp_path / "run" / "stages").exists()


def test_a_pretrained_student_needs_one_source_and_an_existing_folder(tiny_bert_dir, text_data_dir, tmp_path):
    from pydantic import ValidationError

    recipe = _recipe(tiny_bert_dir, text_data_dir, tmp_path / "missing", tmp_path / "run")
    with pytest.raises(EdgekdError, match=r"student.path .*missing.* is not a folder"):
        Pipeline(validate_recipe(recipe)).run()
    recipe["student"]["hub"] = "org/model"
    with pytest.raises((ValidationError, EdgekdError), match="exactly one of student.path"):
        validate_recipe(recipe)
