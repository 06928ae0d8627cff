"""The README's way in, as a user takes it: `edgekd compress` on a model folder and a data folder writes the recipe the
README shows (the same text, the folders put in) and runs it; `edgekd run` of that recipe is the same run, cached."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import edgekd_cli, write_tiny_bert
from edgekd.errors import DataError, RecipeError
from edgekd.recipe import validate_recipe
from edgekd.starter import data_columns, starter_recipe
from edgekd.yamlio import safe_load

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_recipe() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Compress your own model", 1)[1].split("\n## ", 1)[0]
    (recipe,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return recipe


def test_the_readme_is_for_users_and_short():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert not re.search(r"\bissue \d+", text, re.I)  # the project's issue numbers mean nothing to a user
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Two commands", "## Compress your own model"]
    for link in re.findall(r"\]\(((?:docs|benchmarks|profiles)/[\w./-]*)\)", text):
        assert (README.parent / link).exists(), link


def test_the_readme_shows_the_recipe_compress_writes_for_its_folders():
    assert _readme_recipe() == starter_recipe("models/my-classifier", Path("data/my-task"), "host-cpu", check=False)


def test_the_starter_recipe_reads_the_model_and_the_data(tmp_path, text_data_dir, tiny_bert_dir):
    classifier = write_tiny_bert(tmp_path / "clf", classifier=True)
    raw = safe_load(starter_recipe(str(classifier), text_data_dir, "hexagon-npu", out=tmp_path / "run"))
    recipe = validate_recipe(raw)
    assert recipe.teacher.finetune is None and recipe.student.kind == "layers" and recipe.student.layers is None
    assert recipe.profiles == ["host-cpu", "hexagon-npu"]  # measured host first, the target beside it
    assert raw["stages"][3]["export"]["devices"] == ["hexagon-npu"]  # an integer NPU gets its own build
    assert (raw["data"]["text_column"], raw["data"]["label_column"]) == ("sentence", "label")
    encoder = validate_recipe(safe_load(starter_recipe(str(tiny_bert_dir), text_data_dir, "host-cpu",
                                                       student="layers:1")))
    assert encoder.teacher.finetune is not None and encoder.student.layers == [1]  # no head: one is trained first
    assert encoder.profiles == ["host-cpu"]
    with pytest.raises(RecipeError, match="--student 'transformer'"):
        starter_recipe(str(classifier), text_data_dir, "host-cpu", student="transformer")
    deep = write_tiny_bert(tmp_path / "deep", classifier=True, num_hidden_layers=12)  # a third of a deep teacher
    assert validate_recipe(safe_load(starter_recipe(str(deep), text_data_dir, "host-cpu"))).student.layers == [2, 5, 8, 11]
    for source, key in ((str(tmp_path / "clf"), "path"), ("my-org/small-model", "hub")):  # a folder, or a hub id
        student = validate_recipe(safe_load(starter_recipe(str(classifier), text_data_dir, "host-cpu",
                                                           student=f"pretrained:{source}"))).student
        assert student.kind == "pretrained" and getattr(student, key) == source


def test_data_columns_are_found_by_their_usual_names_or_refused_naming_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.jsonl").write_text('{"review": "good", "verdict": "positive"}\n')
    assert data_columns(tmp_path / "a", None, None) == ("review", "verdict")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train.csv").write_text("body,stars\ngood,5\n")
    with pytest.raises(DataError, match=r"train.csv.*\['body', 'stars'\].*--text-column"):
        data_columns(tmp_path / "b", None, None)
    assert data_columns(tmp_path / "b", "body", "stars") == ("body", "stars")
    with pytest.raises(DataError, match="no train.tsv, train.csv or train.jsonl"):
        data_columns(tmp_path / "nothing", None, None)


def test_the_starter_recipe_holds_dev_out_of_train_where_the_data_has_no_dev_file(tmp_path, text_data_dir):
    import shutil

    classifier = write_tiny_bert(tmp_path / "clf", classifier=True)

    def data(*splits: str) -> Path:
        folder = tmp_path / "-".join(splits)
        folder.mkdir()
        for split in splits:
            shutil.copy(text_data_dir / f"{'train' if split == 'train' else 'dev'}.tsv", folder / f"{split}.tsv")
        return folder

    def recipe(folder: Path):
        return validate_recipe(safe_load(starter_recipe(str(classifier), folder, "host-cpu"))).data

    assert recipe(text_data_dir).dev_holdout is None and recipe(text_data_dir).dev_split == "dev"
    assert recipe(data("train", "validation", "test")).dev_split == "validation"
    held = data("train", "test")
    assert recipe(held).dev_holdout == 0.1
    from edgekd.data.loading import load_data

    loaded = load_data(recipe(held), "text-classification")  # the recipe's data loads: dev is out of train
    assert len(loaded.dev.labels) > 0 and len(loaded.train.labels) + len(loaded.dev.labels) <= 240
    with pytest.raises(DataError, match=r"no test.tsv, test.csv or test.jsonl: edgekd reports every accuracy"):
        starter_recipe(str(classifier), data("train", "dev"), "host-cpu")
    # a run of a recipe naming a dev file the folder lacks says how to do without one
    with pytest.raises(DataError, match=r"No file for the 'dev' split .* data.dev_holdout: 0.1"):
        load_data(validate_recipe(safe_load(starter_recipe(str(classifier), text_data_dir, "host-cpu")
                                                 .replace(str(text_data_dir), str(held)))).data, "text-classification")


def test_init_writes_the_starter_recipe_and_never_overwrites_one(tmp_path):
    proc = edgekd_cli("init", "--out", tmp_path / "recipe.yaml")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "recipe.yaml").read_text() == _readme_recipe()
    proc = edgekd_cli("init", "--out", tmp_path / "recipe.yaml")
    assert proc.returncode == 2 and "does not overwrite" in proc.stderr


@pytest.mark.slow
def test_compress_on_a_users_classifier_and_data_then_run_of_its_recipe_from_cache(tmp_path, text_data_dir):
    model = write_tiny_bert(tmp_path / "my-classifier", classifier=True)  # a folder as save_pretrained writes it
    out = tmp_path / "runs" / "my-classifier"
    # the profile shortened (its rounds run a fresh process per model and case), and the export times only the QAT
    # model's own INT8 graph against FP32 (the layouts have their own tests); --set lands in recipe.yaml
    proc = edgekd_cli("compress", model, "--data", text_data_dir, "--profile", "host-cpu", "--out", out,
                      "--set", "stages.4.profile.runs=5", "--set", "stages.4.profile.rounds=1",
                      "--set", "stages.4.profile.natural_lengths=false", "--set", "stages.4.profile.ptq_baselines=false",
                      "--set", "stages.3.export.int8_dynamic=false", "--set", "stages.3.export.int8_fused=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("recipe.yaml", "model.onnx", "tokenizer.json", "config.json", "preprocess.json", "report.md",
                 "manifest.json"):
        assert (out / name).is_file(), name
    written = safe_load((out / "recipe.yaml").read_text())
    assert written["stages"][4]["profile"]["rounds"] == 1 and written["teacher"]["path"] == str(model)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["teacher", "distill", "prune", "qat", "export", "profile"]
    distill = json.loads((out / next(s["path"] for s in manifest["stages"] if s["stage"] == "distill")
                          / "manifest.json").read_text())
    assert distill["spec"]["hf_config"]["num_hidden_layers"] == 1  # every other layer of the 2-layer classifier
    before = {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    again = edgekd_cli("run", out / "recipe.yaml", quiet=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("cached") == 6, again.stderr  # the same run: every stage from the cache
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()} == before  # and none rewritten
