"""End to end: the CLI on a tiny text recipe, the Python API on a tiny image recipe."""
from __future__ import annotations

import json
import os
import subprocess

import onnx
import pytest
import yaml

from conftest import edgekd_cli as edgekd
from conftest import reuse_stages, tiny_image_recipe
from edgekd.devices import qnn
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe

# Every test here runs the pipeline or the CLI end to end (the session's text_run and image_run are shared with
# other files): the slow tier.
pytestmark = pytest.mark.slow


def test_cli_run_writes_a_validated_int8_onnx_model_and_report(text_run):
    root, _, _ = text_run
    out = root / "out"
    g = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in g.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    m = json.loads((out / "manifest.json").read_text())
    assert [s["stage"] for s in m["stages"]] == ["teacher", "distill", "prune", "qat", "export", "profile"]
    assert m["teacher_accuracy"] > 0.8  # the tiny task is learnable: the run really trained
    assert m["accuracy"] >= m["teacher_accuracy"] - 0.15
    assert m["export_validation"]["failures"] == [] and m["export_validation"]["argmax_agreement"] >= 0.95
    final = m["systems"]["final"]
    assert set(final["latency_ms"]["host-cpu"]) == {"seq128_t1", "seq128_t2", "natural_t1"}
    t1 = final["latency_ms"]["host-cpu"]["seq128_t1"]
    # two rounds, each its own process; p50 is the quieter round's median, the tail pools both
    assert t1["rounds"] == 2 and len(t1["round_p50s"]) == 2 and t1["p50"] == pytest.approx(min(t1["round_p50s"]), abs=1e-3)
    assert t1["runs"] == 10 and t1["p99"] >= t1["p90"] >= t1["p50"] > 0 and t1["round_spread"] >= 0
    batch = final["throughput"]["host-cpu"]["b8_seq128_t2"]  # host-cpu's batch_sizes [1, 8]
    assert batch["batch_size"] == 8 and batch["items_per_s"] == pytest.approx(8000 / batch["ms_per_batch"])
    assert (out / "tokenizer.json").is_file() and (out / "preprocess.json").is_file()
    report = (out / "report.md").read_text()
    assert "| prune |" in report and "teacher-fp32" in report
    pruned = next(s for s in m["stages"] if s["stage"] == "prune")
    assert pruned["params"] < next(s for s in m["stages"] if s["stage"] == "distill")["params"]
    # the 3-epoch distillation kept its best epoch on dev: the stage's dev accuracy is that epoch's score
    distill = json.loads(next((out / "stages").glob("*-distill-*/manifest.json")).read_text())["metrics"]
    selection = distill["train"]["selection"]
    assert [s["epoch"] for s in selection["scores"]] == [1, 2, 3] and selection["on"] == "dev accuracy"
    assert distill["dev_accuracy"] == max(s["score"] for s in selection["scores"])
    # what transferred to the shipped ONNX model, from the same predictions as its accuracy
    t = final["transfer"]
    assert t["accuracy"] == final["accuracy"] and t["agreement"] == final["agreement"]
    assert t["teacher_accuracy"] == m["systems"]["teacher-fp32"]["accuracy"] and 0 <= t["ece"] <= 1
    profile_dir = out / next(s for s in m["stages"] if s["stage"] == "profile")["path"]
    lines = (profile_dir / t["disagreements_file"]).read_text().splitlines()
    assert len(lines) == t["disagreements"]
    assert all(json.loads(x)["student"] != json.loads(x)["teacher"] for x in lines)
    assert "## What transferred (test split)" in report and "| shipped model.onnx (ONNX Runtime) |" in report
    assert "| distill |" in report.split("## What transferred")[1]


def test_every_registered_stage_runs_in_the_end_to_end_runs(text_run, image_run):
    """Asserted from what the runs wrote: every stage of the registry has an artifact in the CLI text run or the
    Python-API image run, the teacher first and the others in the registry's order."""
    from edgekd.stages import FIRST, LISTED, STAGES

    text = json.loads((text_run[0] / "out" / "manifest.json").read_text())
    image = json.loads((image_run[0] / "manifest.json").read_text())
    ran = [[s["stage"] for s in m["stages"]] for m in (text, image)]
    assert set(STAGES) == {FIRST, *LISTED} and set(STAGES) <= set(ran[0]) | set(ran[1])
    for stages in ran:
        assert stages[0] == FIRST and stages[1:] == [s for s in LISTED if s in stages[1:]]
        assert all((text_run[0] / "out" / st["path"]).is_dir() for st in text["stages"])


def test_the_later_stages_read_the_teacher_stage_own_dev_and_test_outputs(text_run, image_run):
    """The teacher stage caches the logits of its own evaluation on dev and test, so no later stage runs the teacher
    over them again: each cache file is written before the teacher's manifest (a stage after it would write it
    later), and gives the accuracy the teacher stage reports."""
    from safetensors.numpy import load_file

    from edgekd.train.context import Context

    text_recipe = validate_recipe(yaml.safe_load(text_run[1].read_text()))
    for out, ctx in ((text_run[0] / "out", Context(text_recipe, text_run[0] / "out")), (image_run[0], image_run[1].ctx)):
        teacher = next((out / "stages").glob("00-teacher-*"))
        manifest = teacher / "manifest.json"
        for split in ("dev", "test"):
            files = list((out / "cache").glob(f"teacher-logits-{split}-*"))
            assert len(files) == 1, files
            assert files[0].stat().st_mtime_ns <= manifest.stat().st_mtime_ns, f"{split}: the teacher ran again"
            right = load_file(str(files[0]))["logits"].argmax(-1) == getattr(ctx.data, split).labels
            assert right.mean() == pytest.approx(json.loads(manifest.read_text())["metrics"][f"{split}_accuracy"])


def test_cli_report_and_profile(text_run, tmp_path, text_data_dir):
    root, _, _ = text_run
    out = root / "out"
    assert edgekd("report", out).returncode == 0
    res = tmp_path / "p.json"
    proc = edgekd("profile", out / "model.onnx", "--data", text_data_dir, "--runs", "5", "--rounds", "1", "--json", res)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(res.read_text())
    assert 0.5 <= result["accuracy"] <= 1.0 and result["examples"] == 60
    assert result["latency_ms"]["seq128_t1"]["p90"] >= result["latency_ms"]["seq128_t1"]["p50"]


def test_python_api_runs_the_image_path_cross_architecture(image_run):
    out, pipe, result = image_run
    assert set(result) >= {"teacher", "distill", "prune", "qat", "export", "profile", "summary"}
    assert result["distill"]["test_accuracy"] > 0.5  # a CNN learned from a ViT teacher
    assert result["prune"]["params_after"] < result["prune"]["params_before"]
    s = result["summary"]
    assert s["systems"]["final"]["accuracy"] > 0.5
    assert (out / "model.onnx").is_file()
    # INT8 ships only where the host measured it faster than FP32 (export.int8_min_speedup, 1.05 by default)
    export = next(a for a in pipe.artifacts if a.stage == "export")
    shipped_ops = {n.op_type for n in onnx.load(str(export.path / "model.onnx")).graph.node}
    int8 = export.manifest["int8"]
    # the QAT model's QDQ graph as onnxruntime optimises it (beside the shipped one when dynamic INT8 measured faster)
    qdq = "model-int8-qdq" if int8["layout"] == "dynamic" else "model"
    assert (export.path / f"{qdq}.optimized.onnx").is_file() and set(int8["layouts"]) == {"qdq", "dynamic"}
    assert "nothing to fold" in int8["layouts_skipped"]["fused"]  # QLinearConv adds its bias itself
    # every conv runs as an integer kernel, the last one too (its output is quantized: QLinearConv, not FusedConv)
    assert int8["integer_kernels"]["ok"], int8["integer_kernels"]
    optimized = {n.op_type for n in onnx.load(str(export.path / f"{qdq}.optimized.onnx")).graph.node}
    assert "QLinearConv" in optimized and not {"Conv", "FusedConv"} & optimized, optimized
    if result["export"]["int8_speedup"] >= 1.05 and int8["integer_kernels"]["ok"]:
        assert result["export"]["shipped"] == "int8" and "QLinearConv" not in shipped_ops
        assert ("DequantizeLinear" if int8["layout"] == "qdq" else "ConvInteger") in shipped_ops
        assert not (export.path / "model-int8.onnx").exists()
    else:
        assert result["export"]["shipped"] == "fp32" and "the FP32 model ships" in int8["reason"]
        assert "DequantizeLinear" not in shipped_ops and (export.path / "model-int8.onnx").is_file()


def _teacher_only(out):
    r = {**tiny_image_recipe(out), "stages": []}
    r["teacher"]["finetune"]["epochs"] = 3
    return validate_recipe(r)


def test_same_recipe_and_seed_give_the_same_metrics(tmp_path):
    a = Pipeline(_teacher_only(tmp_path / "a")).run()
    b = Pipeline(_teacher_only(tmp_path / "b")).run()
    assert a["teacher"]["test_accuracy"] == b["teacher"]["test_accuracy"]
    assert a["teacher"]["train"]["final_loss"] == b["teacher"]["train"]["final_loss"]


def test_an_npu_profile_gets_a_device_build_and_the_qat_artifact_exports_again_after_the_run_moved(text_run, tmp_path):
    """With hexagon-npu among the profiles, export builds devices/hexagon-npu/model.onnx (static, full INT8) and the
    run reports that build's compatibility, accuracy and estimated latency on the NPU. Later, `edgekd export QAT
    --profile host-cpu` rebuilds the run's context from the artifact's manifest (the run's device builds dropped),
    even after the run folder moved."""
    import shutil

    root, _, _ = text_run
    out = tmp_path / "out"
    reuse_stages(root / "out", out, ("teacher", "distill", "prune"))
    recipe = yaml.safe_load((root / "recipe.yaml").read_text())
    recipe.update(output=str(out), profiles=["host-cpu", "hexagon-npu"])
    recipe["stages"][3]["export"].update(devices=["hexagon-npu"], device_min_agreement=0.9)
    recipe["stages"][4]["profile"].update(rounds=1, natural_lengths=False, compare_teacher=False, ptq_baselines=False)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = edgekd("run", path, quiet=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # teacher..prune come from the cache; QAT runs again: with an integer NPU among the profiles it also trains
    # attention's Q/K/V outputs in INT8 (qat.attention_matmuls unset)
    assert proc.stderr.count("cached") == 3, proc.stderr
    # a stage that ran says, as it ends, how long it took and what it reached (its manifest's figures)
    qat = json.loads(next((out / "stages").glob("*-qat-*/manifest.json")).read_text())["metrics"]
    assert ("✓ qat in " in proc.stderr and f": dev {qat['dev_accuracy']:.2%}, test {qat['test_accuracy']:.2%}, agreement "
            f"with the teacher on test {qat['test_agreement']:.2%}" in " ".join(proc.stderr.split())), proc.stderr
    g = onnx.load(str(out / "devices" / "hexagon-npu" / "model.onnx"))
    shape = [d.dim_value for d in g.graph.input[0].type.tensor_type.shape.dim]
    # static, at data.max_length (32): its texts are truncated there, and no profile length (128, 384) is reached
    # (where one is, the longest the model's position table holds: test_export_npu.py)
    assert shape == [1, 32]
    m = json.loads((out / "manifest.json").read_text())
    assert m["compat"]["hexagon-npu"]["model"] == "final-hexagon-npu"
    assert m["compat"]["hexagon-npu"]["fallback_nodes_share"] == 0 and m["compat"]["hexagon-npu"]["ok"]
    assert m["compat"]["host-cpu"]["model"] == "final"
    npu = m["systems"]["final-hexagon-npu"]
    assert npu["built_for"] == "hexagon-npu" and 0 < npu["accuracy"] <= 1
    assert list(npu["latency_ms"]) == ["hexagon-npu"]  # a device build runs on its device only
    assert all(x["estimated"] for x in npu["latency_ms"]["hexagon-npu"].values())
    # with the NPU profile's own error against Qualcomm's published timings, not the host estimator's
    trust = m["estimators"]["hexagon-npu"]
    assert trust["anchored"] and "bert-base at seq 384 on Samsung Galaxy S24" in trust["anchor"]
    assert {x["estimator_error"] for x in npu["latency_ms"]["hexagon-npu"].values()} == {trust["estimator_error"]}
    assert list(npu["latency_ms"]["hexagon-npu"]) == ["seq32_t1"]  # estimated at its fixed length
    assert "hexagon-npu" not in m["systems"]["final"]["latency_ms"]  # the CPU model does not ship there
    assert m["device_models"]["hexagon-npu"]["file"] == "devices/hexagon-npu/model.onnx"
    # Qualcomm's compiler (onnxruntime-qnn's HTP backend) took the build: where its nodes went, what the HTP computes
    htp = m["device_models"]["hexagon-npu"]["htp"]
    if qnn.available():
        assert htp["checked"] and htp["placement"]["cpu_nodes"] == 0 and htp["placement"]["partitions"] == 1, htp
        assert htp["examples"] == 60 and htp["argmax_agreement"] >= 0.9 and htp["npu_fallback"] == "refuse"
        assert npu["accuracy_by"].startswith("onnxruntime-qnn") and npu["accuracy"] == htp["accuracy"]
        assert npu["simulated"]["examples"] == 60 and npu["htp_placement"]["cpu_nodes"] == 0
        assert "Compiled by Qualcomm's compiler for HTP v75" in (out / "report.md").read_text()
        # the deployable artifact: the EPContext model and its context binary, loaded back with the same outputs
        context = htp["context"]
        assert context["same_outputs"] and context["checked_examples"] == 8 and context["binaries"]
        assert (out / "devices" / "hexagon-npu" / "model_ctx.onnx").is_file()
    else:  # without it, the CPU simulation stays, labelled so
        assert htp["checked"] is False and "simulation" in npu["accuracy_by"]
    used = {s["stage"]: out / s["path"] / "manifest.json" for s in m["stages"]}  # this run's, not the copied ones
    qat = json.loads(used["qat"].read_text())
    attn = qat["spec"]["quant"]["scheme"]["attention_outputs"]
    assert len(attn) == 3 and all(a.endswith(".output_quant") for a in attn)  # 1 layer: query, key, value
    export = json.loads(used["export"].read_text())
    assert "and for 3 attention Q/K/V outputs" in export["devices"]["hexagon-npu"]["onnx"]["quantization"]["ranges"]
    # the CPU build keeps attention's products float: no QuantizeLinear on a Q/K/V projection's output
    cpu = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in cpu.graph.node for o in n.output}
    q_after_qkv = [n.name for n in cpu.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producers
                   and any(k in producers[n.input[0]].name for k in ("/query/", "/key/", "/value/"))]
    assert q_after_qkv == []

    # the QAT artifact exported again for the CPU: it used to fail with a recipe error when the run listed
    # export.devices, and it must not depend on the run folder staying where it was
    record = qat["run"]
    teacher = next(s["path"] for s in m["stages"] if s["stage"] == "teacher").split("/")[-1]
    assert record["recipe"]["stages"][3]["export"]["devices"] == ["hexagon-npu"] and record["teacher"] == teacher
    qat_dir = used["qat"].parent.name
    shutil.move(str(out), str(tmp_path / "moved"))  # the recorded run folder is gone: found beside the artifact
    proc = edgekd("export", tmp_path / "moved" / "stages" / qat_dir, "--profile", "host-cpu", "--out", tmp_path / "exp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "exp" / "model.onnx").is_file() and (tmp_path / "exp" / "tokenizer.json").is_file()
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["profile"] == "host-cpu" and "devices" not in manifest
    assert manifest["metrics"]["validation"]["failures"] == []


OPTIMUM_PYTHON = os.path.join(os.path.dirname(__file__), "..", ".venv-optimum", "bin", "python")


@pytest.mark.skipif(not os.path.exists(OPTIMUM_PYTHON),
                    reason="Optimum's environment (.venv-optimum, `make bench-env`; .ci/run builds it) is absent")
def test_the_run_folder_loads_in_optimum_with_the_same_logits(text_run):
    """config.json and the (trimmed) tokenizer beside model.onnx: Optimum's ORTModel runs the folder as shipped."""
    import numpy as np
    from transformers import AutoTokenizer

    from edgekd.data.batching import Encoded
    from edgekd.devices.runtime import onnx_logits

    out = text_run[0] / "out"
    texts = ["the film was good", "a dull and boring movie", "superb acting"]
    script = (
        "import json, sys\n"
        "from optimum.onnxruntime import ORTModelForSequenceClassification\n"
        "from transformers import AutoTokenizer\n"
        "m = ORTModelForSequenceClassification.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "x = t(json.loads(sys.argv[2]), return_tensors='np', padding=True)\n"
        "print(json.dumps({'logits': m(**x).logits.tolist(), 'labels': m.config.id2label}))\n")
    proc = subprocess.run([OPTIMUM_PYTHON, "-c", script, str(out), json.dumps(texts)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    theirs = np.array(answer["logits"])
    # Optimum's pipelines name the classes as the data did (preprocess.json keeps the data's label names)
    names = json.loads((out / "preprocess.json").read_text())["labels"]
    assert answer["labels"] == {str(i): name for i, name in enumerate(names)}
    tok = AutoTokenizer.from_pretrained(str(out))
    ours = onnx_logits(out / "model.onnx", Encoded(np.zeros(len(texts), np.int64), ids=tok(texts)["input_ids"]))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tok)


def test_a_profile_that_asks_for_ort_format_gets_a_model_ort_with_the_same_logits(text_run, tmp_path, capfd):
    import shutil

    import numpy as np
    import onnxruntime as ort

    from edgekd.export.stage import _ort_format_models

    export = next((text_run[0] / "out" / "stages").glob("*-export-*"))
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    made = _ort_format_models(["host-cpu", "phone-big-core"], {}, folder)
    assert made == {"phone-big-core": "model.ort"}  # host-cpu does not ask for it
    printed = "".join(capfd.readouterr())  # the converter's running commentary is not shown
    assert "Converting" not in printed and "Created config" not in printed, printed
    feed = {"input_ids": np.array([[2, 7, 9, 11, 3]], np.int64), "attention_mask": np.ones((1, 5), np.int64)}
    a = ort.InferenceSession(str(folder / "model.onnx")).run(None, feed)[0]
    b = ort.InferenceSession(str(folder / "model.ort")).run(None, feed)[0]
    np.testing.assert_allclose(a, b, atol=1e-4)
    # where model.onnx is onnxruntime's own x86 graph, the .ort is made from the standard file beside it
    assert _ort_format_models(["phone-big-core"], {}, folder, "model-fp32.onnx") == {"phone-big-core": "model-fp32.ort"}


def test_where_int8_does_not_pay_the_text_run_ships_fp32_and_still_reports_the_int8_model(tmp_path, text_run):
    """int8_min_speedup no host reaches: the FP32 export ships (trimmed vocabulary and all), INT8 is measured beside it."""
    r = yaml.safe_load((text_run[0] / "recipe.yaml").read_text())
    r["output"] = str(tmp_path / "out")
    reuse_stages(text_run[0] / "out", tmp_path / "out", ("teacher", "distill", "prune", "qat"))
    r["stages"][3]["export"]["int8_min_speedup"] = 100.0
    r["stages"][4]["profile"].update(rounds=1, natural_lengths=False, compare_teacher=False, ptq_baselines=True)
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()
    export = next(a for a in pipe.artifacts if a.stage == "export")
    assert result["export"]["shipped"] == "fp32" and "below export.int8_min_speedup=100" in export.manifest["int8"]["reason"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert "QuantizeLinear" not in ops and (export.path / "model-int8.onnx").is_file()
    assert export.metrics["validation"]["failures"] == [] and export.manifest["validation_int8"]["failures"] == []
    systems = result["summary"]["systems"]
    assert systems["final-int8"]["not_shipped"] and systems["final-int8"]["accuracy"] > 0.5
    assert "ptq-dynamic" in systems  # the baselines are built from the FP32 model that ships
    assert result["summary"]["int8_speedup_vs_fp32"]  # INT8 (final-int8) against the shipped FP32 (final)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**FP32 ships**" in report and "## Vocabulary" in report
