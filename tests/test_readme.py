"""The README's "Compress your own model" recipe, copied verbatim with a model folder and a data folder put in,
runs through every stage and lands what the README says it does."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import edgekd_cli, write_tiny_bert

README = Path(__file__).resolve().parents[1] / "README.md"


def _own_model_recipe() -> str:
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
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)", text):
        assert (README.parent / link).is_file(), link


@pytest.mark.slow
def test_the_readme_recipe_runs_on_a_users_classifier_and_data(tmp_path, text_data_dir):
    recipe = _own_model_recipe()
    assert "data/my-task" in recipe and "models/my-classifier" in recipe
    model = write_tiny_bert(tmp_path / "my-classifier", classifier=True)  # a folder as save_pretrained writes it
    path = tmp_path / "my-model.yaml"
    path.write_text(recipe.replace("data/my-task", str(text_data_dir)).replace("models/my-classifier", str(model))
                    .replace("runs/my-model", str(tmp_path / "runs" / "my-model")), encoding="utf-8")
    # the recipe as written; only the profile is shortened (its rounds run a fresh process per model and case)
    proc = edgekd_cli("run", path, "--set", "stages.4.profile.runs=5", "--set", "stages.4.profile.rounds=1",
                      "--set", "stages.4.profile.natural_lengths=false", "--set", "stages.4.profile.ptq_baselines=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "my-model"
    for name in ("model.onnx", "tokenizer.json", "config.json", "preprocess.json", "report.md", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["teacher", "distill", "prune", "qat", "export", "profile"]
    distill = json.loads((out / next(s["path"] for s in manifest["stages"] if s["stage"] == "distill")
                          / "manifest.json").read_text())
    assert distill["spec"]["hf_config"]["num_hidden_layers"] == 1  # every other layer of the 2-layer classifier
