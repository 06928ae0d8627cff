"""NPU builds checked by Qualcomm's own compiler: onnxruntime-qnn's HTP backend (x86 emulation). Where it is not
installed these tests skip (CI installs it with edgekd[dev]); the CPU simulation's labelling is checked by
test_pipeline_e2e.py either way."""
from __future__ import annotations

import contextlib
import json

import pytest
import yaml

from conftest import reuse_stages
from edgekd.devices import qnn
from edgekd.errors import NpuFallbackError
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe

pytestmark = pytest.mark.skipif(not qnn.available(), reason="onnxruntime-qnn (Qualcomm's HTP backend) is not "
                                "installed: pip install edgekd[qnn] (Linux x86_64, Python >= 3.11)")


def _recipe_reusing(text_run, out) -> dict:
    """The session text run's recipe, writing to `out`, where its teacher, distill and prune artifacts are copied (the
    run finds them in its cache)."""
    root = text_run[0]
    reuse_stages(root / "out", out, ("teacher", "distill", "prune"))
    return {**yaml.safe_load((root / "recipe.yaml").read_text()), "output": str(out)}


@pytest.mark.slow
def test_a_node_the_htp_rejects_is_refused_by_default_and_shipped_and_reported_when_allowed(text_run, tmp_path,
                                                                                           monkeypatch):
    import edgekd.export.vocab as vocab

    out = tmp_path / "out"
    recipe = _recipe_reusing(text_run, out)
    recipe.update(profiles=["host-cpu", "hexagon-npu"])
    recipe["stages"][3]["export"].update(devices=["hexagon-npu"], device_min_agreement=0.9, teacher=False)
    recipe["stages"][4]["profile"].update(rounds=1, natural_lengths=False, compare_teacher=False, ptq_baselines=False)
    # the vocabulary's int16 row map as the build had it before: the HTP rejects a Gather of int16 data
    monkeypatch.setattr(vocab, "int32_row_map", lambda model: contextlib.nullcontext())
    with pytest.raises(NpuFallbackError, match=r"leaves 1 of \d+ nodes of the hexagon-npu build to the CPU: "
                                               r"\S*word_embeddings\S*Gather \(Gather: .*QNN error 3110"):
        Pipeline(validate_recipe(recipe)).run()
    assert {p.name.split("-")[1] for p in (out / "stages").iterdir()} == {"teacher", "distill", "prune", "qat"}

    recipe["stages"][3]["export"]["npu_fallback"] = "allow"
    Pipeline(validate_recipe(recipe)).run()  # the trained stages from the cache
    m = json.loads((out / "manifest.json").read_text())
    htp = m["device_models"]["hexagon-npu"]["htp"]
    assert htp["npu_fallback"] == "allow" and htp["placement"]["cpu_ops"] == {"Gather": 1}
    (rejected,) = htp["placement"]["rejected"]
    assert rejected["op"] == "Gather" and "3110" in rejected["reason"]
    assert htp["placement"]["partitions"] >= 1 and htp["examples"] == 60
    report = (out / "report.md").read_text()
    assert "**1 nodes on the CPU** (Gather ×1)" in report and "export.npu_fallback: allow" in report


def _export_qat(text_run, out, profile: str, min_agreement: float):
    """`edgekd export` of the session text run's QAT artifact for `profile`, into `out`."""
    from conftest import edgekd_cli

    (qat,) = (text_run[0] / "out" / "stages").glob("*-qat-*")
    proc = edgekd_cli("export", qat, "--profile", profile, "--out", out, "--min-agreement", str(min_agreement))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a fresh process: QNN's HTP library prints its configuration line when it starts; edgekd keeps it out
    assert "LIBNATIVE" not in proc.stdout + proc.stderr
    return out


@pytest.mark.slow
def test_edgekd_export_for_the_npu_writes_the_context_binary_that_loads_back_with_the_same_outputs(text_run, tmp_path):
    import numpy as np

    from edgekd.devices.profiles import load_profile
    from edgekd.devices.runtime import static_onnx_logits, static_shapes

    out = _export_qat(text_run, tmp_path / "npu", "hexagon-npu", 0.9)
    htp = json.loads((out / "manifest.json").read_text())["htp"]
    assert htp["placement"]["cpu_nodes"] == 0 and htp["context"]["same_outputs"]
    binary = out / htp["context"]["binaries"][0]
    assert binary.stat().st_size > 10_000 and (out / "model_ctx.onnx").stat().st_size < 10_000  # the graph is in the binary
    # a fresh process loads it as an app would: no compiling, the HTP's own outputs
    session = qnn.load_context_model(out / "model_ctx.onnx", load_profile("hexagon-npu"))
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from edgekd.data.batching import encode
    from edgekd.data.loading import Split

    texts = ["a lovely film", "boring and flat"]
    enc = encode(Split("t", np.zeros(2, dtype=np.int64), texts=texts), AutoTokenizer.from_pretrained(str(out)), 32)
    got = static_onnx_logits(session, enc, static_shapes(session), "context")
    assert got.shape == (2, 2) and np.isfinite(got).all()
    assert load_file(str(out / htp["logits"]))["logits"].shape[1] == 2


@pytest.mark.slow
def test_a_w8a16_build_has_16_bit_activations_runs_wholly_on_the_htp_and_agrees_with_pytorch(text_run, tmp_path):
    import onnx

    from edgekd.devices.compat import check_compatibility
    from edgekd.devices.profiles import load_profile

    out = _export_qat(text_run, tmp_path / "w8a16", "hexagon-npu-w8a16", 0.95)
    graph = onnx.load(str(out / "model.onnx")).graph
    zero_points = {i.name: i.data_type for i in graph.initializer}
    activation_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in zero_points]
    eight_bit = [n.name for n in activation_q if zero_points[n.input[2]] != onnx.TensorProto.UINT16]
    # every activation is 16-bit but the rows gathered from the 8-bit word-embedding table, converted after the lookup
    assert len(activation_q) > 10 and len(eight_bit) == 1 and "word_embeddings" in eight_bit[0], eight_bit
    assert check_compatibility(out / "model.onnx", load_profile("hexagon-npu-w8a16"))["quantization_violations"] == []
    matmul_weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"}  # through their DQ: still 8-bit
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in matmul_weights
                 and n.input[0] in zero_points]
    assert weight_dq and all(zero_points[n.input[0]] == onnx.TensorProto.UINT8 for n in weight_dq)
    # the word-embedding table read by Gather stays 8-bit too (onnxruntime's config would make it 16-bit: twice the bytes)
    (table,) = [i for i in graph.initializer if "word_embeddings" in i.name and i.name.endswith("_quantized")]
    assert table.data_type == onnx.TensorProto.UINT8
    manifest = json.loads((out / "manifest.json").read_text())
    htp = manifest["htp"]
    assert htp["placement"]["cpu_nodes"] == 0 and htp["placement"]["partitions"] == 1
    assert htp["argmax_agreement"] >= 0.98 and htp["context"]["same_outputs"]
    # 16-bit activations after 8-bit QAT: built from the pruned weights QAT started from, beside the QAT artifact
    (pruned,) = (text_run[0] / "out" / "stages").glob("*-prune-*")
    assert manifest["weights"]["from"] == "pre-qat" and pruned.name.endswith(manifest["weights"]["artifact"])
    assert manifest["onnx"]["quantization"]["ranges"].startswith("calibrated (MinMax; the model has no QAT ranges)")


@pytest.mark.slow
def test_the_npu_baseline_is_onnxruntimes_qnn_ptq_of_the_pruned_student_compiled_and_run_on_the_htp(text_run, tmp_path,
                                                                                                   monkeypatch):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import benchmarks.npu_peer as npu_peer
    from edgekd.models.spec import load_model_from_artifact

    recipe = _recipe_reusing(text_run, tmp_path / "out")
    recipe["stages"] = recipe["stages"][:2]  # distill and prune, from the cache
    pipe = Pipeline(validate_recipe(recipe))
    pipe.run()
    pruned = load_model_from_artifact(next(a for a in pipe.artifacts if a.stage == "prune"))
    facts = npu_peer.qnn_ptq_peer(pruned, pipe.ctx, "hexagon-npu", tmp_path / "peer", 32, 30)
    # Olive's mask value: no scale in the quantized graph comes from float32's lowest fill value
    assert facts["mask_fill_values_replaced"] >= 1 and facts["seq_len"] == 32
    graph = onnx.load(str(tmp_path / "peer" / "model.onnx")).graph
    scales = [numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")]
    assert scales and max(float(np.abs(s).max()) for s in scales) < 1e6
    assert any(n.op_type == "LayerNormalization" for n in graph.node)  # qnn_preprocess_model fused it
    htp = facts["htp"]
    assert htp["examples"] == 30 and htp["placement"]["htp_nodes"] > 0
    assert htp["placement"]["cpu_nodes"] == len(htp["placement"]["rejected"])
    assert 0.0 <= htp["argmax_agreement"] <= 1.0 and (tmp_path / "peer" / htp["logits"]).is_file()
    assert (tmp_path / "peer" / "model_ctx.onnx").is_file()  # run on its context binary, as edgekd's builds are
    # built once: a second call reads its facts
    monkeypatch.setattr(npu_peer, "_build", lambda *a: pytest.fail("rebuilt a cached baseline"))
    assert npu_peer.qnn_ptq_peer(None, pipe.ctx, "hexagon-npu", tmp_path / "peer", 32, 30) == facts


def test_a_trimmed_text_cnns_w8a16_build_runs_wholly_on_the_htp(tmp_path):
    """The wide text CNN's build left two nodes on the CPU: its 8-bit embedding rows went on through a Transpose, and
    its `nearest` row map stayed int16 (QNN error 3110 on that Gather)."""
    import numpy as np

    from test_export_npu import calib_feeds, static_inputs, text_cnn
    from edgekd.devices.profiles import load_profile
    from edgekd.export.device import export_for_device
    from edgekd.export.vocab import int32_row_map, remap_embeddings

    profile = load_profile("hexagon-npu-w8a16")
    model = text_cnn()
    remap_embeddings(model, np.arange(0, 50, 2), exclude={0})
    with int32_row_map(model):  # as the export stage builds for an integer NPU
        facts = export_for_device(model, static_inputs(), tmp_path, profile, calib_feeds(), 17)
    assert facts["compat"]["quantization_violations"] == []
    _, placement = qnn.htp_session(tmp_path / "model.onnx", profile)
    assert placement["cpu_nodes"] == 0 and placement["partitions"] == 1, placement
