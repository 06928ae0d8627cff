"""Bad input gets a clear, one-paragraph error naming the file / field / value — exit 2, no traceback.

Table-driven: every case is `(input, expected message fragments)`. The fragments are the things a
user must be able to find the problem from (field paths like `stages[1].prune.ratio`, file names,
the bad value), never generic words. Every message must also be a single paragraph.

Layers: recipe validation, --set overrides, recipe files, data folders, model folders, ONNX
files, device profiles and the CLI (exit codes, no traceback, no output folder on failure).
Nothing here trains a model: every case fails before any work starts.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekd.configs import DataConfig
from edgekd.data.loading import Split, load_data
from edgekd.errors import DataError, EdgekdError, ModelError, ProfileError, RecipeError
from edgekd.recipe import apply_overrides, load_recipe, validate_recipe

REPO = Path(__file__).resolve().parents[1]
DELETE = object()  # sentinel: remove the key instead of setting it


# ---------------------------------------------------------------------------------------- helpers
def base_recipe() -> dict:
    """A minimal valid text recipe with every stage, in the only legal order."""
    return {
        "name": "bad-inputs",
        "task": "text-classification",
        "seed": 0,
        "output": "runs/bad-inputs",
        "data": {"path": "data/sst2", "text_column": "sentence", "label_column": "label"},
        "teacher": {"path": "models/teacher"},
        "student": {"kind": "layers", "layers": [0, 1]},
        "stages": [
            {"distill": {"epochs": 1, "temperature": 2.0, "alpha": 0.9}},
            {"prune": {"ratio": 0.3}},
            {"qat": {"epochs": 1}},
            {"export": {"min_agreement": 0.99}},
            {"profile": {"compare_teacher": True}},
        ],
        "profiles": ["host-cpu"],
    }


def set_path(raw: dict, path: str, value) -> dict:
    """Set (or with DELETE remove) `a.b.0.c` in a nested dict/list, independently of edgekd's own --set."""
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


def mutated(**changes) -> dict:
    """base_recipe() with `changes` applied; keys use `__` for `.` (stages__0__distill__alpha=…)."""
    raw = copy.deepcopy(base_recipe())
    for key, value in changes.items():
        set_path(raw, key.replace("__", "."), value)
    return raw


def assert_clear(message: str, fragments: list[str]) -> None:
    """The message is one paragraph, has no traceback, and names every expected fragment."""
    assert "\n" not in message, f"message is not one paragraph: {message!r}"
    assert "Traceback" not in message
    for frag in fragments:
        assert frag in message, f"{frag!r} not named in: {message}"


def raises_naming(exc_type, fragments: list[str]):
    """pytest.raises matching the first fragment literally (the others are checked by assert_clear)."""
    return pytest.raises(exc_type, match=re.escape(fragments[0]))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------- 1. recipe validation
RECIPE_CASES = [
    # a device build for a profile the recipe does not profile
    pytest.param(mutated(stages__3__export__devices=["hexagon-npu"]),
                 ["stages[3].export.devices", "'hexagon-npu'", "not in the recipe's profiles"], id="device-build-not-profiled"),
    pytest.param(mutated(stages__3__export__device_min_agreement=1.5),
                 ["stages[3].export.device_min_agreement", "1.5"], id="device-min-agreement-over-1"),
    pytest.param(mutated(stages__4__profile__rounds=0), ["stages[4].profile.rounds", "(got 0)"], id="zero-rounds"),
    # misspelled keys, at every depth
    pytest.param(mutated(nmae="x"), ["nmae", "unknown key"], id="typo-top-level-key"),
    pytest.param(mutated(data__txt_column="text"), ["data.txt_column", "unknown key"], id="typo-data-key"),
    pytest.param(mutated(stages__0__distill__temprature=3.0), ["stages[0].distill.temprature", "unknown key"],
                 id="typo-stage-key"),
    pytest.param(mutated(stages__1__prune__recovery={"temprature": 2.0}),
                 ["stages[1].prune.recovery.temprature", "unknown key"], id="typo-nested-stage-key"),
    pytest.param(mutated(teacher__pth="models/teacher"), ["teacher.pth", "unknown key"], id="typo-teacher-key"),
    # wrong types
    pytest.param(mutated(seed="abc"), ["seed", "valid integer", "'abc'"], id="seed-not-int"),
    pytest.param(mutated(stages__0__distill__epochs="many"), ["stages[0].distill.epochs", "'many'"],
                 id="epochs-not-number"),
    pytest.param(mutated(profiles="host-cpu"), ["profiles", "valid list", "'host-cpu'"], id="profiles-not-list"),
    pytest.param(mutated(stages="distill"), ["stages", "valid list", "'distill'"], id="stages-not-list"),
    # strict numbers and booleans: nothing a user did not write is made up by coercion
    pytest.param(mutated(seed=True), ["seed", "valid integer", "whole number", "(got True)"], id="seed-true"),
    pytest.param(mutated(seed="3"), ["seed", "valid integer", "unquoted", "(got '3')"], id="seed-quoted"),
    pytest.param(mutated(seed=3.5), ["seed", "valid integer", "(got 3.5)"], id="seed-fraction"),
    pytest.param(mutated(teacher__trust_remote_code="yes"),
                 ["teacher.trust_remote_code", "valid boolean", "true or false", "(got 'yes')"],
                 id="trust-remote-code-yes"),
    pytest.param(mutated(teacher__trust_remote_code=1), ["teacher.trust_remote_code", "valid boolean", "(got 1)"],
                 id="trust-remote-code-1"),
    pytest.param(mutated(stages__0__distill__alpha=True), ["stages[0].distill.alpha", "valid number", "(got True)"],
                 id="float-given-true"),
    pytest.param(mutated(stages__1__prune__ratio="0.5"), ["stages[1].prune.ratio", "unquoted", "(got '0.5')"],
                 id="float-quoted"),
    pytest.param(mutated(stages__0__distill__batch_size=False), ["stages[0].distill.batch_size", "(got False)"],
                 id="int-given-false"),
    pytest.param(mutated(stages__3__export__teacher="no"), ["stages[3].export.teacher", "valid boolean", "(got 'no')"],
                 id="bool-quoted-no"),
    # out-of-range values: path in the stages[i].stage.field form and the bad value
    pytest.param(mutated(stages__1__prune__ratio=0), ["stages[1].prune.ratio", "greater than 0", "(got 0)"],
                 id="prune-ratio-0"),
    pytest.param(mutated(stages__1__prune__ratio=1), ["stages[1].prune.ratio", "less than 1", "(got 1)"],
                 id="prune-ratio-1"),
    pytest.param(mutated(stages__1__prune__ratio=1.5), ["stages[1].prune.ratio", "(got 1.5)"], id="prune-ratio-1.5"),
    pytest.param(mutated(stages__1__prune__importance="random"), ["stages[1].prune.importance", "'random'", "taylor"],
                 id="prune-importance-unknown"),
    pytest.param(mutated(stages__0__distill__temperature=0), ["stages[0].distill.temperature", "(got 0)"],
                 id="temperature-0"),
    pytest.param(mutated(stages__0__distill__temperature=-1), ["stages[0].distill.temperature", "(got -1)"],
                 id="temperature-negative"),
    pytest.param(mutated(stages__0__distill__alpha=1.5), ["stages[0].distill.alpha", "(got 1.5)"], id="alpha-1.5"),
    pytest.param(mutated(stages__0__distill__batch_size=0), ["stages[0].distill.batch_size", "(got 0)"],
                 id="batch-size-0"),
    pytest.param(mutated(stages__2__qat__weight_bits=4), ["stages[2].qat.weight_bits", "should be 8", "(got 4)"],
                 id="qat-weight-bits-4"),
    pytest.param(mutated(stages__2__qat__activation_bits=4), ["stages[2].qat.activation_bits", "(got 4)"],
                 id="qat-activation-bits-4"),
    pytest.param(mutated(stages__2__qat__activation_bits=16), ["stages[2].qat", "activation_dtype: uint16"],
                 id="qat-activation-bits-16-without-uint16"),
    pytest.param(mutated(stages__3__export__opset=9), ["stages[3].export.opset", "13", "(got 9)"], id="opset-9"),
    pytest.param(mutated(data__max_length=4), ["data.max_length", "(got 4)"], id="max-length-4"),
    pytest.param(mutated(task="regression"), ["task", "text-classification", "'regression'"], id="task-unknown"),
    pytest.param(mutated(output=DELETE), ["output", "Field required"], id="output-missing"),
    # stage names and order
    pytest.param(mutated(stages__0={"distil": {}}), ["stages[0]", "unknown stage 'distil'", "distill"],
                 id="stage-name-typo"),
    pytest.param(mutated(stages__0="distil"), ["stages[0]", "unknown stage 'distil'"], id="stage-name-typo-bare"),
    pytest.param(mutated(stages__0={"distill": {}, "prune": {}}), ["stages[0]", "one key", "'prune'"],
                 id="stage-two-keys"),
    pytest.param(mutated(stages=[{"distill": {}}, {"export": {}}, {"prune": {}}]),
                 ["stages[2] 'prune' cannot follow 'export'", "distill or teacher"], id="prune-after-export"),
    pytest.param(mutated(stages=[{"distill": {}}, {"profile": {}}]),
                 ["stages[1] 'profile' cannot follow 'distill'", "after export"], id="profile-without-export"),
    pytest.param(mutated(stages=[{"distill": {}}, {"distill": {}}]), ["'distill' appears twice", "stages[1]"],
                 id="stage-twice"),
    # cross-field rules
    pytest.param(mutated(student=DELETE), ["distill stage", "`student:`"], id="distill-without-student"),
    pytest.param(mutated(student={"kind": "layers", "layers": []}), ["student.layers", "is empty"],
                 id="layers-student-with-no-layers"),
    pytest.param(mutated(student={"kind": "layers", "layers": [1, 1]}), ["student.layers", "distinct"],
                 id="student-duplicate-layers"),
    pytest.param(mutated(data__hub="glue"), ["data.path, data.hub or data.sklearn", "['path', 'hub']"],
                 id="two-data-sources"),
    pytest.param(mutated(data={"text_column": "sentence"}), ["data.path, data.hub or data.sklearn", "got none"],
                 id="no-data-source"),
    pytest.param(mutated(data={"sklearn": "digits"}), ["data.sklearn=digits", "task: image-classification"],
                 id="digits-for-text-task"),
    pytest.param(mutated(teacher__hub="bert-base-uncased"), ["teacher.path, teacher.hub or teacher.config",
                                                             "['path', 'hub']"], id="teacher-path-and-hub"),
    pytest.param(mutated(teacher={"config": {"model_type": "bert"}}), ["teacher.finetune", "random weights"],
                 id="teacher-config-without-finetune"),
    pytest.param(mutated(name="my run!"), ["name", "'my run!'"], id="name-bad-characters"),
]


def test_base_recipe_is_valid():
    """Every case below differs from this valid recipe by one mutation, so that mutation is the error."""
    recipe = validate_recipe(base_recipe())
    assert recipe.stage_names() == ["distill", "prune", "qat", "export", "profile"]


@pytest.mark.parametrize("raw, fragments", RECIPE_CASES)
def test_recipe_validation(raw, fragments):
    with raises_naming(RecipeError, fragments) as ei:
        validate_recipe(raw, "'my.yaml'")
    msg = str(ei.value)
    assert msg.startswith("Invalid recipe 'my.yaml': ")
    assert_clear(msg, fragments)


def test_strict_types_keep_what_yaml_users_write(tmp_path):
    """Ints for floats, a bare `no` for precision, `5e-5` (a string to YAML 1.1), `--set seed=3`."""
    text = yaml.safe_dump(mutated(stages__0__distill__alpha=1)) + "precision: no\n"
    path = write(tmp_path / "r.yaml", re.sub(r"( +)temperature: 2.0", r"\1temperature: 2e0\n\1lr: 5e-5", text))
    recipe = load_recipe(path, ["seed=3", "stages.1.prune.ratio=0.5", "stages.4.profile.compare_teacher=false"])
    distill = recipe.stages[0].config
    assert (recipe.seed, recipe.precision, distill.alpha, distill.temperature, distill.lr) == (3, "no", 1.0, 2.0, 5e-5)
    assert recipe.stages[1].config.ratio == 0.5 and recipe.stages[4].config.compare_teacher is False


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipe_loads(path):
    from edgekd.devices.profiles import load_profile

    recipe = load_recipe(path)
    for name in recipe.profiles:
        load_profile(name)


# ---------------------------------------------------------------------------------------- 2. --set overrides
OVERRIDE_CASES = [
    pytest.param("noequals", ["--set 'noequals'", "key=value"], id="no-equals"),
    pytest.param("=3", ["--set '=3'", "empty key"], id="empty-key"),
    pytest.param("stages.9.prune.ratio=0.5", ["'stages.9.prune.ratio=0.5'", "stages.9 is not a valid list index"],
                 id="list-index-out-of-range"),
    pytest.param("stages.first.prune.ratio=0.5", ["stages.first is not a valid list index"], id="list-index-not-int"),
    pytest.param("stages.9=export", ["'stages.9=export'", "9 is not a valid list index"], id="last-index-out-of-range"),
    pytest.param("name.x=3", ["'name.x=3'", "'x'", "not a mapping"], id="scalar-is-not-a-mapping"),
    pytest.param("stages.0.distill.epochs=[1", ["'stages.0.distill.epochs=[1'", "'[1' is not valid YAML"],
                 id="value-not-yaml"),
]


@pytest.mark.parametrize("item, fragments", OVERRIDE_CASES)
def test_bad_override(item, fragments):
    with raises_naming(RecipeError, fragments) as ei:
        apply_overrides(base_recipe(), [item])
    assert_clear(str(ei.value), fragments)


OVERRIDE_VALUE_CASES = [
    pytest.param(["stages.1.prune.ratio=2"], ["stages[1].prune.ratio", "(got 2)"], id="set-out-of-range"),
    pytest.param(["data.txt_column=text"], ["data.txt_column", "unknown key"], id="set-misspelled-key"),
    pytest.param(["seed=abc"], ["seed", "'abc'"], id="set-wrong-type"),
    pytest.param(["seed=true"], ["seed", "valid integer", "(got True)"], id="set-bool-for-int"),
]


@pytest.mark.parametrize("overrides, fragments", OVERRIDE_VALUE_CASES)
def test_override_value_is_validated_and_names_the_file(tmp_path, overrides, fragments):
    path = write(tmp_path / "ok.yaml", yaml.safe_dump(base_recipe()))
    load_recipe(path)  # valid as written: the override is the problem
    with raises_naming(RecipeError, fragments) as ei:
        load_recipe(path, overrides)
    assert_clear(str(ei.value), fragments + ["ok.yaml"])


# ---------------------------------------------------------------------------------------- 3. recipe files
RECIPE_FILE_CASES = [
    pytest.param(None, "missing.yaml", ["missing.yaml", "does not exist"], id="missing-file"),
    pytest.param(b"name: caf\xe9\ntask: x\n", "latin1.yaml", ["latin1.yaml", "not UTF-8"], id="not-utf8"),
    pytest.param("name: [unclosed\ntask: x\n", "broken.yaml", ["broken.yaml", "not valid YAML", "line"],
                 id="invalid-yaml"),
    pytest.param("- name: x\n- task: y\n", "list.yaml", ["list.yaml", "must be a YAML mapping"], id="yaml-list"),
    pytest.param("", "empty.yaml", ["empty.yaml", "must be a YAML mapping"], id="empty-file"),
    pytest.param(yaml.safe_dump(mutated(data__txt_column="text")), "typo.yaml", ["'", "typo.yaml", "data.txt_column"],
                 id="file-with-typo-names-file-and-field"),
]


@pytest.mark.parametrize("content, filename, fragments", RECIPE_FILE_CASES)
def test_bad_recipe_file(tmp_path, content, filename, fragments):
    path = tmp_path / filename
    if content is not None:
        write(path, content)
    with raises_naming(RecipeError, fragments) as ei:
        load_recipe(path)
    assert_clear(str(ei.value), fragments)


def test_recipe_path_is_a_folder(tmp_path):
    with pytest.raises(RecipeError, match=re.escape(repr(str(tmp_path)))) as ei:
        load_recipe(tmp_path)
    assert_clear(str(ei.value), ["is a folder", "YAML recipe"])


# ---------------------------------------------------------------------------------------- 4. data folders
GOOD = "sentence\tlabel\na good movie\t1\na bad movie\t0\n"
GOOD_FILES = {"train.tsv": GOOD, "dev.tsv": GOOD, "test.tsv": GOOD}

DATA_CASES = [
    # (files in the folder — None: no folder at all, DataConfig overrides, expected fragments)
    pytest.param(None, {}, ["data.path '{folder}' is not a folder"], id="missing-folder"),
    pytest.param({"train.tsv": GOOD, "dev.tsv": GOOD}, {},
                 ["'test' split", "in '{folder}'", "test.tsv, test.csv, test.jsonl", "data.test_split"],
                 id="missing-split-file"),
    pytest.param({"train.tsv": GOOD, "test.tsv": GOOD}, {},
                 ["'dev' split", "dev.tsv, dev.csv, dev.jsonl", "data.dev_split", "data.dev_holdout: 0.1"],
                 id="missing-dev-file"),
    pytest.param(GOOD_FILES, {"format": "csv"}, ["'train' split", "train.csv"], id="format-without-files"),
    pytest.param(GOOD_FILES | {"dev.tsv": ""}, {}, ["dev.tsv", "is empty"], id="empty-file"),
    pytest.param(GOOD_FILES | {"dev.tsv": "  \n\n"}, {}, ["dev.tsv", "is empty"], id="blank-file"),
    pytest.param(GOOD_FILES | {"test.tsv": "sentence\tlabel\n"}, {}, ["test.tsv", "header but no rows"],
                 id="header-only"),
    pytest.param(GOOD_FILES, {"text_column": "text"},
                 ["train.tsv", "no text column 'text'", "'sentence', 'label'", "data.text_column"],
                 id="missing-text-column"),
    pytest.param(GOOD_FILES, {"label_column": "y"},
                 ["train.tsv", "no label column 'y'", "data.label_column"], id="missing-label-column"),
    pytest.param(GOOD_FILES | {"dev.tsv": GOOD + "so-so movie\t2\n"}, {},
                 ["dev.tsv", "labels ['2']", "train labels: ['0', '1']"], id="dev-label-not-in-train"),
    pytest.param({n: "sentence\tlabel\ngood\tpos\nfine\tpos\n" for n in GOOD_FILES}, {},
                 ["train.tsv", "(the train split) has a single class", "'pos'", "data.label_column"], id="train-one-class"),
    pytest.param(GOOD_FILES | {"train.tsv": "sentence\tlabel\ngood\t1\nfine\t1\n"}, {},
                 ["train.tsv", "(the train split) has a single class", "'1'"], id="train-one-class-dev-two"),
    pytest.param(GOOD_FILES | {"train.tsv": GOOD + "a tab\there\t1\n"}, {},
                 ["train.tsv", "line 4", "3 fields but the header has 2", "stray tab"], id="stray-tab-in-text"),
    pytest.param(GOOD_FILES | {"dev.tsv": b"sentence\tlabel\ncaf\xe9 au lait\t1\n"}, {},
                 ["dev.tsv", "not UTF-8", "byte 18"], id="non-utf8-bytes"),
    pytest.param(GOOD_FILES | {"test.tsv": "sentence\tlabel\nno label here\n"}, {},
                 ["test.tsv", "line 2", "'label'"], id="row-without-label"),
    pytest.param({"train.jsonl": '{"sentence": "a", "label": 1}\nnot json\n', "dev.tsv": GOOD, "test.tsv": GOOD}, {},
                 ["train.jsonl", "line 2", "not valid JSON"], id="jsonl-bad-line"),
    pytest.param({"train.jsonl": '[1, 2]\n', "dev.tsv": GOOD, "test.tsv": GOOD}, {},
                 ["train.jsonl", "line 1", "not a JSON object"], id="jsonl-not-object"),
]


@pytest.mark.parametrize("files, cfg, fragments", DATA_CASES)
def test_bad_data(tmp_path, files, cfg, fragments):
    folder = tmp_path / "data"
    if files is not None:
        folder.mkdir()
        for name, content in files.items():
            write(folder / name, content)
    fragments = [f.replace("{folder}", str(folder)) for f in fragments]  # the folder, where no one file is at fault
    with raises_naming(DataError, fragments) as ei:
        load_data(DataConfig(path=str(folder), **cfg), "text-classification")
    assert_clear(str(ei.value), fragments)


def test_good_data_loads(tmp_path):
    """The baseline the data cases mutate is itself valid."""
    for name, content in GOOD_FILES.items():
        write(tmp_path / name, content)
    data = load_data(DataConfig(path=str(tmp_path)), "text-classification")
    assert data.label_names == ["0", "1"] and len(data.train) == 2


def test_data_fingerprint_follows_the_files_not_the_folder_they_lie_in(tmp_path):
    """Every cache key holds the data fingerprint: the same files reached by another path (a moved folder, a
    relative path) must not re-train every stage, while a changed file or reading setting must."""
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        for name, content in GOOD_FILES.items():
            write(folder / name, content)
    a = load_data(DataConfig(path=str(tmp_path / "a")), "text-classification").fingerprint
    relative = os.path.relpath(tmp_path / "b", Path.cwd())
    assert load_data(DataConfig(path=relative), "text-classification").fingerprint == a
    assert load_data(DataConfig(path=str(tmp_path / "a"), max_length=64), "text-classification").fingerprint != a
    write(tmp_path / "b" / "train.tsv", GOOD_FILES["train.tsv"] + "another film\t1\n")
    assert load_data(DataConfig(path=str(tmp_path / "b")), "text-classification").fingerprint != a


def test_long_text_is_truncated_with_a_warning_not_an_error(tmp_path):
    from transformers import BertTokenizerFast

    from edgekd.data.batching import encode

    write(tmp_path / "vocab.txt", "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "movie", "bad"]))
    tok = BertTokenizerFast.from_pretrained(str(tmp_path))
    split = Split("train", np.array([1, 0]), texts=["a good movie " * 20, "a bad movie"])
    with pytest.warns(UserWarning, match=r"1 of 2 texts in the train split .*data\.max_length=8"):
        enc = encode(split, tok, max_length=8)
    assert enc.truncated == 1
    assert len(enc.ids[0]) == 8
    assert enc.ids[0][0] == tok.cls_token_id and enc.ids[0][-1] == tok.sep_token_id  # [SEP] kept
    assert enc.ids[1] == [tok.cls_token_id, 5, 8, 7, tok.sep_token_id]  # short text untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode(Split("dev", np.array([0]), texts=["a bad movie"]), tok, max_length=8)  # nothing to warn about


def test_a_run_says_how_many_texts_it_truncated_once_per_split_in_one_line(tmp_path, capsys):
    from edgekd.cli import _show_warning
    from edgekd.train.context import Context

    data = tmp_path / "data"
    for split in ("train", "dev", "test"):
        rows = (f"{'a good movie ' * (i % 2 * 20)}film {i}\t{i % 2}\n" for i in range(6))  # odd rows: too long
        write(data / f"{split}.tsv", "sentence\tlabel\n" + "".join(rows))
    from types import SimpleNamespace

    from transformers import BertTokenizerFast

    write(tmp_path / "vocab.txt", "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "movie",
                                             "film"]))
    recipe = SimpleNamespace(data=DataConfig(path=str(data), max_length=8), task="text-classification")
    ctx = Context(recipe=recipe, run_dir=tmp_path / "run", _tokenizer=BertTokenizerFast.from_pretrained(str(tmp_path)))
    with pytest.warns(UserWarning) as caught:
        ctx.encoded("train", 4)
        ctx.encoded("train", 2)
        ctx.encoded("train")
        ctx.encoded("test")
    # train's first subset, then the whole split (more of its texts truncated), not the subset between; test
    assert [str(w.message).split(" texts")[0] for w in caught] == ["2 of 4", "3 of 6", "3 of 6"]
    w = caught[0]
    _show_warning(w.message, w.category, w.filename, w.lineno)  # as `edgekd run` shows it
    shown = capsys.readouterr().err
    assert shown.startswith("warning: 2 of 4 texts in the train split are longer than data.max_length=8 tokens")
    assert "UserWarning" not in shown and ".py" not in shown and shown.count("\n") == 1


# ---------------------------------------------------------------------------------------- 5. model folders
def _model_folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / "teacher"
    if kind == "missing":
        return folder
    folder.mkdir()
    if kind in ("pickle-only", "no-weights"):
        write(folder / "config.json", '{"model_type": "bert"}')
    if kind in ("no-config", "pickle-only"):
        write(folder / "pytorch_model.bin", b"\x80\x04not really a pickle")
    return folder


MODEL_CASES = [
    pytest.param("missing", ["teacher.path", "teacher'", "is not a folder", "config.json"], id="missing-folder"),
    pytest.param("no-config", ["teacher'", "has no config.json"], id="no-config-json"),
    pytest.param("pickle-only", ["teacher'", "no .safetensors weights", "pytorch_model.bin", "refuses pickle"],
                 id="pickle-only"),
    pytest.param("no-weights", ["teacher'", "no .safetensors weights", "safetensors.torch.save_model"],
                 id="no-weights"),
]


@pytest.mark.parametrize("kind, fragments", MODEL_CASES)
def test_bad_model_folder(tmp_path, kind, fragments):
    from edgekd.models.hf import check_model_folder

    with raises_naming(ModelError, fragments) as ei:
        check_model_folder(_model_folder(tmp_path, kind))
    assert_clear(str(ei.value), fragments)


def test_pkg_model_path_of_missing_package():
    from edgekd.models.hf import resolve_model_path

    fragments = ["'pkg://surely_not_installed_pkg/model'", "'surely_not_installed_pkg' is not installed", "pip install"]
    with raises_naming(ModelError, fragments) as ei:
        resolve_model_path("pkg://surely_not_installed_pkg/model")
    assert_clear(str(ei.value), fragments)


# ---------------------------------------------------------------------------------------- 6. ONNX files
def _tiny_onnx(path: Path, *, external: str | None = None, op: str = "MatMul", ir_version: int = 8) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    if external is not None:  # point the initializer at an external file instead of inline bytes
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = "location", external
    node = helper.make_node(op, ["x", "W"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _onnx_case(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "models" / "x.onnx"
    if kind == "missing":
        return path
    if kind == "text":
        return write(path, "this is a text file, not a protobuf\n")
    if kind == "empty":
        return write(path, b"")
    if kind == "truncated":
        data = _tiny_onnx(path).read_bytes()
        return write(path, data[: len(data) // 2])
    if kind == "external-escape":
        return _tiny_onnx(path, external="../../etc/passwd")
    if kind == "external-absolute":
        return _tiny_onnx(path, external="/etc/passwd")
    if kind == "external-missing":
        return _tiny_onnx(path, external="weights.bin")
    if kind == "unknown-op":
        return _tiny_onnx(path, op="NotAnOp")
    if kind == "future-ir":
        return _tiny_onnx(path, ir_version=99)
    raise AssertionError(kind)


ONNX_CASES = [
    pytest.param("missing", ["ONNX file", "x.onnx", "does not exist"], id="missing"),
    pytest.param("text", ["x.onnx", "not a valid ONNX model"], id="text-file"),
    pytest.param("empty", ["x.onnx", "no graph nodes"], id="empty-file"),
    pytest.param("truncated", ["x.onnx", "not a valid ONNX model", "truncated"], id="truncated"),
    pytest.param("external-escape", ["x.onnx", "tensor 'W'", "'../../etc/passwd'", "outside the model's folder"],
                 id="external-data-escapes-folder"),
    pytest.param("external-absolute", ["x.onnx", "'/etc/passwd'", "outside the model's folder"],
                 id="external-data-absolute-path"),
    pytest.param("external-missing", ["x.onnx", "fails the ONNX checker", "weights.bin"], id="external-data-missing"),
    pytest.param("unknown-op", ["x.onnx", "fails the ONNX checker", "NotAnOp"], id="unknown-op"),
    pytest.param("future-ir", ["x.onnx", "fails the ONNX checker", "ir_version 99"], id="future-ir-version"),
]


@pytest.mark.parametrize("kind, fragments", ONNX_CASES)
def test_bad_onnx_file(tmp_path, kind, fragments):
    from edgekd.onnx_file import check_onnx_file

    with raises_naming(ModelError, fragments) as ei:
        check_onnx_file(_onnx_case(tmp_path, kind))
    assert_clear(str(ei.value), fragments)


def test_tiny_onnx_baseline_is_accepted(tmp_path):
    from edgekd.onnx_file import check_onnx_file

    assert check_onnx_file(_tiny_onnx(tmp_path / "ok.onnx")).graph.node[0].op_type == "MatMul"


# ---------------------------------------------------------------------------------------- 7. profiles
PROFILE_CASES = [
    pytest.param("nope", ["Unknown device profile 'nope'", "nope.yaml", "Available profiles: ", "host-cpu, ",
                          "local-board", "--profiles-dir"], id="unknown-name"),
    pytest.param("no/such/profile.yaml", ["Profile file 'no/such/profile.yaml' does not exist"], id="missing-file"),
]


@pytest.mark.parametrize("name, fragments", PROFILE_CASES)
def test_bad_profile(tmp_path, monkeypatch, name, fragments):
    from edgekd.devices.profiles import load_profile

    pdir = tmp_path / "profiles"
    pdir.mkdir()
    host = load_profile("host-cpu").model_dump(mode="json")
    (pdir / "local-board.yaml").write_text(yaml.safe_dump({**host, "name": "local-board"}), encoding="utf-8")
    monkeypatch.setenv("EDGEKD_PROFILES_DIR", str(pdir))
    with raises_naming(ProfileError, fragments) as ei:
        load_profile(name)
    assert_clear(str(ei.value), fragments)


# ---------------------------------------------------------------------------------------- 8. CLI
def _cli_fixture(tmp_path: Path, kind: str) -> tuple[list[str], list[str], Path | None]:
    """(arguments, expected fragments, output folder that must not appear)."""
    out = tmp_path / "run-out"
    data = tmp_path / "data"
    for name, content in GOOD_FILES.items():
        write(data / name, content)
    recipe = mutated(output=str(out), data={"path": str(data)}, teacher={"path": str(tmp_path / "teacher")})
    if kind == "run-typo":
        set_path(recipe, "stages.0.distill.temprature", 3.0)
        return ["run", str(write(tmp_path / "typo.yaml", yaml.safe_dump(recipe)))], \
            ["typo.yaml", "stages[0].distill.temprature"], out
    if kind == "run-missing":
        return ["run", str(tmp_path / "missing.yaml")], ["missing.yaml", "does not exist"], None
    if kind == "run-bad-set":
        return ["run", str(write(tmp_path / "ok.yaml", yaml.safe_dump(recipe))), "--set", "stages.9.prune.ratio=0.5"], \
            ["stages.9 is not a valid list index"], out
    if kind == "run-no-data":
        recipe["data"]["path"] = str(tmp_path / "no-data")
        return ["run", str(write(tmp_path / "r.yaml", yaml.safe_dump(recipe)))], ["data.path", "no-data"], out
    if kind == "run-no-teacher":
        return ["run", str(write(tmp_path / "r.yaml", yaml.safe_dump(recipe)))], \
            ["teacher.path", "teacher'", "is not a folder"], out
    if kind == "run-unknown-profile":
        recipe["profiles"] = ["nope"]
        return ["run", str(write(tmp_path / "r.yaml", yaml.safe_dump(recipe)))], \
            ["Unknown device profile 'nope'"], out
    if kind == "profile-not-onnx":
        return ["profile", str(write(tmp_path / "notonnx.onnx", "hello\n"))], \
            ["notonnx.onnx", "not a valid ONNX model"], None
    if kind == "report-not-a-run":
        (tmp_path / "not-a-run").mkdir()
        return ["report", str(tmp_path / "not-a-run")], ["not-a-run", "not an edgekd run folder"], None
    if kind == "profiles-show-unknown":
        return ["profiles", "show", "nope"], ["Unknown device profile 'nope'"], None
    if kind == "export-not-an-artifact":
        return ["export", str(tmp_path / "not-an-artifact"), "--profile", "host-cpu"], \
            ["not-an-artifact", "manifest.json"], None
    raise AssertionError(kind)


CLI_CASES = [
    pytest.param("run-typo", id="run-misspelled-key"),
    pytest.param("run-missing", id="run-missing-recipe"),
    pytest.param("run-bad-set", id="run-bad-set-index"),
    pytest.param("run-no-data", id="run-missing-data-folder"),
    pytest.param("run-no-teacher", id="run-missing-teacher-folder"),
    pytest.param("run-unknown-profile", id="run-unknown-profile"),
    pytest.param("profile-not-onnx", id="profile-not-onnx"),
    pytest.param("report-not-a-run", id="report-not-a-run"),
    pytest.param("profiles-show-unknown", id="profiles-show-unknown"),
    pytest.param("export-not-an-artifact", id="export-not-an-artifact"),
]


@pytest.mark.parametrize("kind", CLI_CASES)
def test_cli_bad_input_exits_2(tmp_path, kind):
    """In-process (typer's CliRunner) to keep the suite light; one real subprocess case follows."""
    from typer.testing import CliRunner

    from edgekd.cli import app

    args, fragments, out = _cli_fixture(tmp_path, kind)
    result = CliRunner().invoke(app, args)
    text = result.output
    assert result.exit_code == 2, text
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    assert "Traceback" not in text and "internal error" not in text
    assert text.startswith("error: ")
    assert_clear(" ".join(text.split()), fragments)  # whitespace-normalised: the console may wrap
    if out is not None:
        assert not out.exists(), "a failed run must not create its output folder"


@pytest.mark.slow
def test_cli_subprocess_bad_recipe(tmp_path):
    """The real entry point: exit 2, the key named on stderr, no traceback, no output folder."""
    args, fragments, out = _cli_fixture(tmp_path, "run-typo")
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: Invalid recipe ")
    assert_clear(" ".join(proc.stderr.split()), fragments)
    assert not out.exists()


def _every_error_type() -> list[type]:
    import edgekd.errors as errors

    found = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, EdgekdError)]
    assert {RecipeError, DataError, ModelError, ProfileError} <= set(found)
    return found


@pytest.mark.parametrize("exc", _every_error_type(), ids=lambda c: c.__name__)
def test_the_cli_reports_every_error_type_as_one_paragraph_with_its_exit_code(exc, monkeypatch, tmp_path):
    """Whatever user error a stage raises, `edgekd run` says it in one paragraph, no traceback: exit 2
    (130 for Ctrl-C, which saved a checkpoint); an unexpected exception is an internal error, exit 1."""
    from typer.testing import CliRunner

    from edgekd import cli
    from edgekd.pipeline import Pipeline

    message = f"the {exc.__name__} message naming teacher.path"
    error = exc(message, []) if exc.__name__ == "ExportValidationError" else exc(message)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Pipeline, "from_yaml", fail)
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "recipe.yaml")])
    expected = 130 if exc.__name__ == "Interrupted" else 2
    assert result.exit_code == expected, result.output
    assert "Traceback" not in result.output and message in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unexpected_exception_is_an_internal_error_with_exit_1(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from edgekd import cli
    from edgekd.pipeline import Pipeline

    def fail(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(Pipeline, "from_yaml", fail)
    result = CliRunner().invoke(cli.app, ["run", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 1 and "internal error: KeyError" in result.output and "--debug" in result.output
    assert "Traceback" not in result.output
