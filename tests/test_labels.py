"""A trained classifier is read with the data's labels: its classes matched by name and reordered, never silently
taken in its own order; a mismatch is refused naming both sets and the recipe key that fixes it."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import edgekd_cli, tiny_text_recipe, write_text_data, write_tiny_bert
from edgekd.errors import ModelError
from edgekd.models.hf import load_hf_classifier
from edgekd.models.labels import class_order

TASK = "text-classification"


def test_classes_match_by_name_ignoring_case_and_space_in_the_datas_order():
    order, how = class_order({0: "Positive ", 1: "negative"}, ["negative", "positive"], None, "m", "teacher.labels")
    assert order == [1, 0] and how["matched_by"] == "name" and how["dropped"] == []


def test_integer_labels_match_default_names_by_index_and_named_classes_only_when_told():
    assert class_order({0: "LABEL_0", 1: "LABEL_1"}, ["0", "1"], None, "m", "teacher.labels")[0] == [0, 1]
    assert class_order({"0": "0", "1": "1"}, ["0", "1"], None, "m", "teacher.labels")[0] == [0, 1]
    with pytest.raises(ModelError) as e:
        class_order({0: "negative", 1: "positive"}, ["0", "1"], None, "m", "teacher.labels")
    msg = str(e.value)
    assert "['negative', 'positive']" in msg and "['0', '1']" in msg and "teacher.labels: {0: 0, 1: 1}" in msg
    order, how = class_order({0: "negative", 1: "positive"}, ["0", "1"], {"0": 1, "1": 0}, "m", "teacher.labels")
    assert order == [1, 0] and how["matched_by"] == "teacher.labels"


def test_names_that_do_not_match_are_refused_with_both_sets_and_the_key():
    with pytest.raises(ModelError) as e:
        class_order({0: "good", 1: "bad"}, ["negative", "positive"], None, "models/x", "teacher.labels")
    msg = str(e.value)
    assert "'models/x'" in msg and "['good', 'bad']" in msg and "['negative', 'positive']" in msg
    assert "teacher.labels: {negative: 0, positive: 1}" in msg and "\n" not in msg
    with pytest.raises(ModelError, match=r"distinct class index .*no such class: \{'positive': 5\}"):
        class_order({0: "good", 1: "bad"}, ["negative", "positive"], {"negative": 0, "positive": 5}, "m",
                    "teacher.labels")
    with pytest.raises(ModelError, match=r"missing: \['positive'\]"):
        class_order({0: "good", 1: "bad"}, ["negative", "positive"], {"negative": 0}, "m", "teacher.labels")


def test_a_class_the_data_never_shows_is_reported_and_a_data_label_the_model_lacks_is_refused():
    order, how = class_order({0: "negative", 1: "neutral", 2: "positive"}, ["negative", "positive"], None, "m", "k")
    assert order == [0, 2] and how["dropped"] == ["neutral"]
    with pytest.raises(ModelError, match="do not match"):
        class_order({0: "negative", 1: "positive"}, ["mixed", "negative", "positive"], None, "m", "k")


def test_a_teacher_no_better_than_the_most_frequent_class_or_than_chance_is_called_weak_naming_the_keys_that_fix_it():
    import numpy as np

    from edgekd.teacher.stage import weak_teacher

    labels = np.array([0, 0, 0, 1])  # 'a' is 75% of dev
    said = weak_teacher(np.array([0, 0, 0, 0]), labels, ["a", "b"], "teachers[]")
    assert said.startswith("the teacher scores 75.00% on dev, no better than always answering the most frequent "
                           "class 'a' (75.00% of dev)")
    assert "(teachers[].finetune)" in said and "(teachers[].labels)" in said
    assert weak_teacher(labels, labels, ["a", "b"], "teacher") is None
    assert "'c'" in weak_teacher(np.array([2, 2, 2, 2]), np.array([2, 2, 0, 1]), ["a", "b", "c"], "teacher")
    # more accurate than the most frequent class (30% against 25%), but it answers 'd' for almost everything: its
    # recall averaged over the four classes, 30%, is within 5 points of chance
    labels = np.repeat([0, 1, 2, 3], 10)
    pred = np.full(40, 3)
    pred[:2] = 0
    said = weak_teacher(pred, labels, ["a", "b", "c", "d"], "teacher")
    assert said.startswith("the teacher recalls 30.00% of each class on dev on average, within 5 points of chance "
                           "(25.00%; it answers 'd' for 95% of dev)")
    pred[:3] = 0  # one more 'a' found: 32.5% on average, no longer within 5 points
    assert weak_teacher(pred, labels, ["a", "b", "c", "d"], "teacher") is None


def _classifier(folder, id2label: dict[int, str]):
    write_tiny_bert(folder, classifier=True, num_labels=len(id2label), id2label=id2label,
                    label2id={v: k for k, v in id2label.items()})
    return folder


def test_a_three_class_head_is_reordered_to_the_datas_labels_with_the_same_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = _classifier(tmp_path / "m", {0: "positive", 1: "mixed", 2: "negative"})
    theirs = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    ours, new, how = load_hf_classifier(str(folder), TASK, ["mixed", "negative", "positive"])
    ours.eval()
    assert not new and how["order"] == [1, 2, 0]
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    with torch.no_grad():
        a, b = theirs(input_ids=ids).logits, ours(input_ids=ids).logits
    torch.testing.assert_close(b, a[:, [1, 2, 0]])
    assert ours.config.id2label == {0: "mixed", 1: "negative", 2: "positive"}


def _string_label_data(folder):
    """The tiny task with labels negative / positive (the conftest task's 0 / 1)."""
    write_text_data(folder)
    for split in ("train", "dev", "test"):
        path = folder / f"{split}.tsv"
        rows = path.read_text().splitlines()
        path.write_text("\n".join([rows[0]] + [f"{t}\t{['negative', 'positive'][int(y)]}"
                                               for t, y in (r.rsplit("\t", 1) for r in rows[1:])]) + "\n")
    return folder


def _teacher_only(model, data, out, **teacher) -> dict:
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe

    r = tiny_text_recipe(model, data, out)
    r["teacher"] = {"path": str(model), **teacher}
    r["stages"] = []
    pipe = Pipeline(validate_recipe(r))
    return pipe, pipe.run()["teacher"]


@pytest.mark.slow
def test_a_classifier_with_its_classes_in_another_order_scores_its_true_accuracy(tmp_path):
    """A sentiment classifier fine-tuned outside edgekd with id2label {0: positive, 1: negative}, used as the teacher
    of data labelled negative / positive: read by name, it scores what it scores in its own order."""
    from edgekd import load_model

    data = _string_label_data(tmp_path / "data")
    base = write_tiny_bert(tmp_path / "bert")
    pipe, trained = _teacher_only(base, data, tmp_path / "ft", finetune={"epochs": 6, "batch_size": 16, "lr": 3e-3,
                                                                           "warmup_ratio": 0.0})
    assert trained["test_accuracy"] > 0.8
    # the user's classifier: the same weights saved by save_pretrained with the classes the other way round
    model = load_model(pipe.artifacts[0].path)
    head = model.classifier
    with torch.no_grad():
        head.weight.copy_(head.weight[[1, 0]].clone())
        head.bias.copy_(head.bias[[1, 0]].clone())
    model.config.id2label, model.config.label2id = {0: "positive", 1: "negative"}, {"positive": 0, "negative": 1}
    theirs = tmp_path / "their-classifier"
    model.save_pretrained(str(theirs), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (pipe.artifacts[0].path / f).is_file():
            (theirs / f).write_bytes((pipe.artifacts[0].path / f).read_bytes())
    _, read = _teacher_only(theirs, data, tmp_path / "run")
    assert read["test_accuracy"] == trained["test_accuracy"]  # not 1 - accuracy
    assert read["labels"]["matched_by"] == "name" and read["labels"]["order"] == [1, 0]
    assert "(name): negative = its class 1, positive = its class 0." in (tmp_path / "run" / "report.md").read_text()
    # its names were wrong for this data: refused before any work, saying what to write
    cfg = json.loads((theirs / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "good", "1": "bad"}, {"good": 0, "bad": 1}
    (theirs / "config.json").write_text(json.dumps(cfg))
    from edgekd.errors import EdgekdError

    with pytest.raises(EdgekdError, match=r"teacher.labels: \{negative: 0, positive: 1\}"):
        _teacher_only(theirs, data, tmp_path / "refused")
    _, told = _teacher_only(theirs, data, tmp_path / "told", labels={"negative": 1, "positive": 0})
    assert told["test_accuracy"] == trained["test_accuracy"] and told["labels"]["matched_by"] == "teacher.labels"
    assert "weak" not in trained and "weak" not in read and "weak" not in told
    # told the wrong order (its own): it answers every example the other way round, below always answering one class,
    # and says so in the run's log and at the top of both reports
    _, wrong = _teacher_only(theirs, data, tmp_path / "wrong", labels={"negative": 0, "positive": 1})
    assert wrong["test_accuracy"] == pytest.approx(1 - trained["test_accuracy"])
    assert wrong["weak"].startswith(f"the teacher scores {wrong['dev_accuracy']:.2%} on dev, no better than always")
    assert "(teacher.labels)" in wrong["weak"]
    assert f"> **Teacher:** {wrong['weak']}" in (tmp_path / "wrong" / "report.md").read_text()
    from edgekd.report.html import write_reports

    page = write_reports([tmp_path / "wrong"], tmp_path / "wrong.html")["html"].read_text()
    assert "<strong>Teacher (" in page and "no better than always answering the most frequent class" in page
    (teacher,) = (tmp_path / "told" / "stages").glob("*-teacher-*")
    assert json.loads((teacher / "preprocess.json").read_text())["labels"] == ["negative", "positive"]


@pytest.mark.slow
def test_a_head_with_a_class_the_data_lacks_is_reported_and_one_short_of_a_class_is_refused(tmp_path, text_data_dir):
    """A three-class head (default names) on the tiny two-class task (labels 0 / 1): its third class is left out and
    said so; a two-class head on three-class data cannot be read, and the CLI says why (exit 2)."""
    three = write_tiny_bert(tmp_path / "three", classifier=True, num_labels=3)
    _, read = _teacher_only(three, text_data_dir, tmp_path / "run")
    assert read["labels"] == {"matched_by": "index", "order": [0, 1], "dropped": ["LABEL_2"],
                              "data_labels": ["0", "1"]}
    assert "its classes ['LABEL_2'], which the data never shows, are left out" in \
        (tmp_path / "run" / "report.md").read_text()
    data = write_text_data(tmp_path / "three-classes")
    test = data / "test.tsv"
    test.write_text(test.read_text() + "a film\t2\n")
    (data / "train.tsv").write_text((data / "train.tsv").read_text() + "a film\t2\n")
    two = write_tiny_bert(tmp_path / "two", classifier=True, num_labels=2)
    r = tiny_text_recipe(two, data, tmp_path / "out")
    del r["teacher"]["finetune"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(r))
    proc = edgekd_cli("run", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    msg = " ".join(proc.stderr.split())
    assert "['LABEL_0', 'LABEL_1']" in msg and "['0', '1', '2']" in msg and "teacher.labels" in msg
