"""Intermediate-layer distillation: hidden-state MSE and attention KL against a live teacher (issue 11, part)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_text_recipe
from edgekd.errors import EdgekdError
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe
from edgekd.models.students import uniform_layer_map
from edgekd.train.losses import AttentionKL, HiddenStateMSE, Outputs


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


@pytest.mark.slow
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


def test_last_k_layer_map_takes_the_teachers_top_layers():
    from edgekd.models.students import last_layer_map

    assert last_layer_map(2, 6) == [4, 5] and last_layer_map(3, 3) == [0, 1, 2]


def test_cosine_hidden_loss_ignores_scale_and_padding_but_not_direction():
    from edgekd.train.losses import HiddenStateCosine

    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    a, b = _outputs(0, mask=mask), _outputs(0, mask=mask)
    b.hidden_states = tuple(3.0 * h for h in a.hidden_states)  # same directions, 3x the norm
    for h in b.hidden_states:
        h[0, 3:] = torch.randn(2, 8)  # padded positions differ
    term = HiddenStateCosine([0, 1])
    assert term(a, b, None).item() == pytest.approx(0.0, abs=1e-5)
    assert term(a, _outputs(1, mask=mask), None).item() > 0.1


def _qkv(seed, width, layers=2, mask=None):
    g = torch.Generator().manual_seed(seed)
    out = _outputs(seed, layers=layers, mask=mask)
    out.qkv = [tuple(torch.randn(2, 5, width, generator=g) for _ in range(3)) for _ in range(layers)]
    return out


def test_relation_kl_compares_models_of_different_widths_and_ignores_padding():
    from edgekd.train.losses import RelationKL

    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student, teacher = _qkv(0, 8, mask=mask), _qkv(1, 12, mask=mask)
    term = RelationKL([0, 1], relation_heads=4)  # divides both widths: 8 (a pruned student) and 12
    assert term(student, teacher, None).item() > 0
    assert term(teacher, teacher, None).item() == pytest.approx(0.0, abs=1e-5)
    moved = _qkv(1, 12, mask=mask)
    for trio in moved.qkv:
        for x in trio:
            x[0, 3:] = 50.0  # the first text's padded tokens
    assert term(student, moved, None).item() == pytest.approx(term(student, teacher, None).item(), rel=1e-5)


def test_relation_heads_default_divides_a_pruned_students_uneven_layers(tiny_bert_dir):
    from edgekd.configs import KDConfig
    from edgekd.train.distiller import capture_qkv, qkv_projections, relation_heads
    from transformers import BertConfig, BertForSequenceClassification

    teacher = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64))
    student = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=4, intermediate_size=64))
    attn = student.bert.encoder.layer[0].attention  # 3 heads of 8 left, as a head-pruned layer has
    for name in ("query", "key", "value"):
        setattr(attn.self, name, torch.nn.Linear(32, 24))
    attn.output.dense = torch.nn.Linear(24, 32)
    for name, value in (("num_attention_heads", 3), ("all_head_size", 24)):
        if hasattr(attn.self, name):
            setattr(attn.self, name, value)
    assert [q.out_features for q, _, _ in qkv_projections(student)] == [24]
    assert relation_heads(KDConfig(), student, teacher, [1]) == 4  # gcd(24, 32) = 8; its largest divisor <= 4 heads
    with pytest.raises(EdgekdError, match="relation_heads 3 does not divide the projection widths \\[32\\]"):
        relation_heads(KDConfig(relation_heads=3), student, teacher, [1])
    with capture_qkv(qkv_projections(student)) as qkv:
        student(input_ids=torch.ones(2, 6, dtype=torch.long))
    assert [tuple(x.shape) for x in qkv[0]] == [(2, 6, 24)] * 3


@pytest.mark.slow
def test_pruned_heads_recover_with_relation_transfer(tmp_path, tiny_bert_dir, text_data_dir):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    prune = r["stages"][1]["prune"]
    prune["recovery"] = {**prune["recovery"], "relation_weight": 1.0, "hidden_weight": 1.0, "hidden_loss": "cosine",
                         "layer_map": "last"}
    r["stages"] = r["stages"][:2]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()["prune"]
    assert result["dev_accuracy"] > 0.5
    # the pruned model's own transfer report on test, with its disagreements file
    art = next(a for a in pipe.artifacts if a.stage == "prune")
    lines = (art.path / "disagreements-test.jsonl").read_text().splitlines()
    assert len(lines) == result["transfer"]["disagreements"] and 0 <= result["transfer"]["ece"] <= 1
    with pytest.raises(Exception, match="attention_weight to 0 and use relation_weight"):
        r2 = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run2")
        r2["stages"] = r2["stages"][:2]
        r2["stages"][1]["prune"]["recovery"]["attention_weight"] = 1.0
        Pipeline(validate_recipe(r2)).run()


def test_a_narrow_config_student_is_sliced_from_the_teacher_not_random():
    from transformers import BertConfig, BertForSequenceClassification

    from edgekd.configs import StudentConfig
    from edgekd.models.students import build_student

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=3,
                                                       num_attention_heads=4, intermediate_size=64)).eval()
    cfg = StudentConfig(kind="config", overrides={"hidden_size": 16, "num_attention_heads": 2,
                                                  "intermediate_size": 24, "num_hidden_layers": 2})
    student, base = build_student(cfg, teacher, {"family": "hf"}, "text-classification", 2)
    init = student.edgekd_init
    assert init["layer_map"] == [0, 2] and init["random"] == [] and init["sliced"] > 0
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"][:, :16])
    # student layer 1 comes from teacher layer 2: its first two heads (head size 8 kept) and first 24 FFN channels
    q = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s[q.format(1)], t[q.format(2)][:16, :16])
    ffn = "bert.encoder.layer.{}.intermediate.dense.weight"
    assert torch.equal(s[ffn.format(1)], t[ffn.format(2)][:24, :16])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"][:, :16])
    with torch.no_grad():  # a working model: the sliced teacher is a start, not a copy
        assert torch.isfinite(student(input_ids=torch.ones(2, 5, dtype=torch.long)).logits).all()
    bad = StudentConfig(kind="config", layers=[0], overrides={"num_hidden_layers": 2})
    with pytest.raises(Exception, match="needs that many teacher layers"):
        build_student(bad, teacher, {"family": "hf"}, "text-classification", 2)


@pytest.mark.slow
def test_a_narrow_student_distils_hidden_states_through_projections_that_are_not_shipped(
        tmp_path, tiny_bert_dir, text_data_dir):
    from safetensors import safe_open

    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["student"] = {"kind": "config", "overrides": {"hidden_size": 16, "num_attention_heads": 2,
                                                    "intermediate_size": 32, "num_hidden_layers": 1}}
    r["stages"] = [{"distill": {**r["stages"][0]["distill"], "epochs": 2, "hidden_weight": 1.0,
                                "relation_weight": 1.0}}]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()["distill"]
    assert result["student_init"]["layer_map"] == [1] and result["student_init"]["random"] == []
    art = next(a for a in pipe.artifacts if a.stage == "distill")
    with safe_open(str(art.path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("projection" in k for k in keys)
    from edgekd.models.spec import load_model_from_artifact
    assert load_model_from_artifact(art).config.hidden_size == 16


def test_alpha_and_temperature_anneal_linearly_over_training():
    import numpy as np

    from edgekd.configs import KDConfig
    from edgekd.data.batching import Encoded
    from edgekd.train.distiller import Distiller
    from edgekd.train.loop import fit
    from edgekd.train.losses import HardLabelCE, LogitKD

    d = Distiller.from_config(KDConfig(alpha=0.5, alpha_end=1.0, temperature=4.0, temperature_end=1.0),
                              np.zeros((8, 2), dtype=np.float32))

    def weights():
        kd = next((w, t.temperature) for w, t in d.terms if isinstance(t, LogitKD))
        ce = next((w for w, t in d.terms if isinstance(t, HardLabelCE)), 0.0)
        return kd, ce

    d.set_progress(0.0)
    assert weights() == ((0.5, 4.0), 0.5)
    d.set_progress(0.5)
    assert weights() == ((0.75, 2.5), 0.25)
    d.set_progress(1.0)
    assert weights() == ((1.0, 1.0), 0.0)  # the hard-label term is gone at the end
    seen = []
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    data = Encoded(np.array([0, 1] * 4), ids=[[1, 2, 3]] * 8)
    fit(model, data, KDConfig(epochs=2, batch_size=4, lr=1e-3),
        lambda m, b, idx, y: torch.nn.functional.cross_entropy(m(b["input_ids"]), y), seed=0, desc="t",
        on_step=seen.append)
    assert seen == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.slow
def test_two_teachers_each_get_an_artifact_and_the_student_learns_from_their_average(
        tmp_path, tiny_bert_dir, text_data_dir):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["teachers"] = [{**r["teacher"], "seed": 7, "weight": 0.5}]  # the same model fine-tuned from another seed
    r["stages"] = [{"distill": {**r["stages"][0]["distill"], "epochs": 2}}]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()["distill"]
    teachers = [a for a in pipe.artifacts if a.stage == "teacher"]
    assert len(teachers) == 2 and teachers[0].id != teachers[1].id
    members = result["teachers"]["members"]
    assert [m["artifact"] for m in members] == [t.id for t in teachers] and members[1]["weight"] == 0.5
    assert 0 <= result["teachers"]["ensemble_test_accuracy"] <= 1 and result["test_accuracy"] > 0.5
    # adding a teacher changes what the student learns from: the single-teacher distill is another artifact
    r1 = {**r, "teachers": []}
    single = Pipeline(validate_recipe(r1))
    single.run()
    assert next(a for a in single.artifacts if a.stage == "distill").id != \
        next(a for a in pipe.artifacts if a.stage == "distill").id
    with pytest.raises(Exception, match="is the same as `teacher`"):
        validate_recipe({**r, "teachers": [{**r["teacher"], "weight": 2.0}]})


@pytest.mark.slow
def test_torchrun_two_processes_with_every_option_match_one_process(tmp_path, tiny_bert_dir, text_data_dir):
    """The one torchrun test: `torchrun --standalone --nproc_per_node=2 -m edgekd run RECIPE` (DDP over gloo) on a
    recipe that uses every distillation option at once: a narrow config student (hidden projections in the DDP
    model), hidden MSE, MiniLM relation KL, an alpha / temperature schedule, two teachers, unlabelled + augmented +
    oversampled transfer data, budget pruning whose recovery uses the cosine hidden loss and the relation loss, then
    QAT, and an export that rank 0 runs alone while the other process waits. Every training stage trains on both
    processes, rank 1 writes nothing into the run folder, and the result is the one-process result within noise."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    traffic = tmp_path / "traffic.txt"
    traffic.write_text("the film was superb\nvery dull plot\nit is a lovely story\nnot good\n", encoding="utf-8")
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "one")
    r["teachers"] = [{**r["teacher"], "seed": 7, "weight": 0.5}]
    r["student"] = {"kind": "config", "overrides": {"hidden_size": 16, "num_attention_heads": 2,
                                                    "intermediate_size": 32, "num_hidden_layers": 1}}
    kd = {**r["stages"][0]["distill"], "epochs": 2, "hidden_weight": 1.0, "relation_weight": 1.0,
          "alpha_end": 1.0, "temperature_end": 1.0,
          "transfer": {"unlabelled": [str(traffic)], "repeat": {str(traffic): 2},
                       "augment": {"copies": 1, "replace_prob": 0.3, "neighbours": 3}}}
    recovery = {**kd, "epochs": 1, "hidden_loss": "cosine", "transfer": None}
    export = {**r["stages"][3]["export"], "int8_dynamic": False, "int8_fused": False}
    r["stages"] = [{"distill": kd}, {"prune": {"budget": {"params": 0.7}, "steps": 2, "width_multiple": 4,
                                              "importance": "loss", "recovery": recovery}},
                   r["stages"][2], {"export": export}]
    # an estimated profile: no pruning step or export is timed on this host (what DDP changes is training)
    r["profiles"] = ["x86-server-vnni"]
    runs = {}
    # the one-process reference in this process (its modules are loaded: no interpreter start), one thread as each
    # torchrun worker has; the two-process run as a user launches it
    r["output"] = str(tmp_path / "one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Pipeline(validate_recipe(r)).run()
    finally:
        torch.set_num_threads(threads)
    r["output"] = str(tmp_path / "two")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(r))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "edgekd", "run", str(tmp_path / "two.yaml")], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "EDGEKD_QUIET": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("one", "two"):
        runs[name] = json.loads((tmp_path / name / "manifest.json").read_text())
    trained = [s for s in runs["two"]["stages"] if "train" in s["metrics"]]
    assert [s["stage"] for s in trained] == ["teacher", "teacher", "distill", "qat"]
    assert all(s["metrics"]["train"]["processes"] == 2 for s in trained)
    stages = {n: {s["stage"] + str(i): s["metrics"] for i, s in enumerate(m["stages"])} for n, m in runs.items()}
    one, two = stages["one"], stages["two"]
    distill = next(k for k in two if k.startswith("distill"))
    assert two[distill]["train"]["processes"] == 2 and one[distill]["train"]["processes"] == 1
    # the same transfer set in both: the teacher labels are a property of the data, not of the process count
    assert two[distill]["train"]["transfer_set"] == one[distill]["train"]["transfer_set"]
    assert two[distill]["train"]["transfer_set"]["kept"] == 2 * 4 + two[distill]["train"]["transfer_set"]["augmented"]
    prune = next(k for k in two if k.startswith("prune"))
    assert all(s["recovery"]["processes"] == 2 and s["recovery"]["examples_per_s"] > 0 for s in two[prune]["steps"])
    for st in (one, two):
        assert st[prune]["non_embedding_params_after"] <= 0.7 * st[prune]["non_embedding_params_before"]
    for k in (distill, prune):  # 60 test sentences
        assert abs(two[k]["test_accuracy"] - one[k]["test_accuracy"]) <= 0.1, (k, two[k], one[k])
    # the ONNX model rank 0 exported, validated against PyTorch on dev; the teachers
    export = next(k for k in two if k.startswith("export"))
    assert two[export]["validation"]["failures"] == [] and two[export]["validation"]["argmax_agreement"] >= 0.95
    teachers = [k for k in two if k.startswith("teacher")]
    assert all(abs(two[k]["test_accuracy"] - one[k]["test_accuracy"]) <= 0.1 for k in teachers)
    leftovers = [p for p in (tmp_path / "two").rglob("*") if "rank1" in p.name or p.name.startswith(".tmp")]
    assert not leftovers  # rank 1 wrote nothing into the run folder
