"""Export for an integer NPU (hexagon-npu): static shapes, full INT8 QDQ in the device's scheme, no
operator fallback, or a refusal naming the operators; the CPU path is unchanged. Tiny BERTs from configs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from onnx import numpy_helper
from transformers import BertConfig, BertForSequenceClassification

import edgekd.export.attention_mask as attention_mask
from edgekd.data.batching import Encoded
from edgekd.errors import EdgekdError
from edgekd.export.device import export_for_device
from edgekd.export.onnx_export import export_onnx
from edgekd.export.validate import validate_export
from edgekd.devices.compat import check_compatibility, op_key
from edgekd.devices.feeds import text_feeds
from edgekd.devices.profiles import load_profile
from edgekd.models.cnn import TextCNN
from edgekd.models.rnn import TextBiLSTM
from edgekd.quantize.fakequant import convert, quantizable_modules, set_mode

SEQ = 16
NAMES = ["input_ids", "attention_mask"]


def encoded(n, seed, lo=3, hi=12):
    rng = np.random.default_rng(seed)
    ids = [list(rng.integers(5, 50, rng.integers(lo, hi))) for _ in range(n)]
    return Encoded(np.zeros(n, dtype=np.int64), ids=ids)


def qat_bert():
    """A QAT-converted tiny BERT whose attention is far from uniform (initializer_range 0.2), so that
    a mask or score quantization that flattens attention shows in the logits."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=2, initializer_range=0.2, attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()
    names = quantizable_modules(model)
    convert(model, names, "uint8")
    set_mode(model, "calibrate")
    data = encoded(64, 0)
    with torch.no_grad():
        model(**data.batch(np.arange(len(data))))
    for n in names:
        model.get_submodule(n).freeze(n)
    return model


def static_inputs(seq=SEQ):
    return {"input_ids": torch.full((1, seq), 5), "attention_mask": torch.ones(1, seq, dtype=torch.long)}


def calib_feeds():
    return text_feeds(encoded(64, 1).ids, NAMES, SEQ)


@pytest.fixture(scope="module")
def npu():
    return load_profile("hexagon-npu")


@pytest.fixture(scope="module")
def npu_export(tmp_path_factory, npu):
    model = qat_bert()
    out = tmp_path_factory.mktemp("npu")
    facts = export_for_device(model, static_inputs(), out, npu, calib_feeds(), 17)
    return model, out, facts


def test_npu_export_has_static_shapes_and_no_operator_fallback(npu_export, npu):
    _, out, facts = npu_export
    g = onnx.load(str(out / "model.onnx"))
    for inp in g.graph.input:
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, SEQ], inp.name
    compat = check_compatibility(out / "model.onnx", npu, SEQ)
    assert compat["unsupported_ops"] == [] and compat["fallback_nodes_share"] == 0.0
    assert compat["dynamic_inputs"] == [] and compat["quantization_violations"] == [] and compat["ok"]
    assert facts["compat"]["fallback_nodes_share"] == 0.0 and facts["static_shapes"] and facts["seq_len"] == SEQ
    assert all(op_key(n) in set(npu.supported_ops) | {"Constant"} for n in g.graph.node)
    # HF's mask construction (Where on finfo.min, IsNaN) is not in the graph
    assert not {"Where", "IsNaN"} & {n.op_type for n in g.graph.node}
    assert (out / "model-fp32.onnx").is_file()


def test_npu_export_is_full_int8_with_uint8_per_tensor_weights(npu_export):
    _, out, facts = npu_export
    g = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    weight_dqs = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dqs and facts["quantized_weights"] == len(weight_dqs)
    for dq in weight_dqs:
        w = inits[dq.input[0]]
        if w.dtype == np.int32:
            continue  # Gemm biases: int32, the convention on every device
        assert w.dtype == np.uint8, dq.input[0]
        assert inits[dq.input[1]].size == 1, f"{dq.input[0]} is not per-tensor"
    # every MatMul, the attention ones (activation x activation) included, reads dequantized uint8
    matmuls = [n for n in g.node if n.op_type in ("MatMul", "Gemm")]
    assert len([n for n in matmuls if "attention/self/MatMul" in n.name]) == 4  # QK^T and PV, 2 layers
    for n in matmuls:
        for i in n.input[:2]:
            assert producer[i].op_type == "DequantizeLinear", (n.name, i)
    assert all(inits[n.input[2]].dtype == np.uint8 for n in g.node if n.op_type == "QuantizeLinear")
    q = facts["quantization"]
    assert (q["activation_dtype"], q["weight_dtype"], q["weight_granularity"]) == ("uint8", "uint8", "per-tensor")
    assert q["ranges"].startswith("QAT ranges for the inputs of 14 of 14")


def test_attention_mask_is_finite_and_scores_keep_their_resolution(npu_export):
    """HF's finfo.min mask gave the score+mask Adds a uint8 scale of 1.3e36 (uniform attention)."""
    _, out, facts = npu_export
    mask = facts["quantization"]["attention_mask"]
    assert 0 < mask["mask_value"] < 1000 and len(mask["score_adds"]) == 2
    g = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    scales = {n.input[0]: float(inits[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear"}
    for a in mask["score_adds"]:
        lo, hi = a["output_range"]
        assert a["range_applied"] and scales[a["output"]] == pytest.approx((hi - lo) / 255, rel=1e-3)
        assert scales[a["output"]] < 0.5


def test_npu_export_agrees_with_the_qat_model_on_padded_static_inputs(npu_export):
    model, out, _ = npu_export
    data = encoded(200, 2, lo=3, hi=30)  # some longer than SEQ: truncated as the device would get them
    report = validate_export(model, out / "model.onnx", data, 0.9, NAMES)
    assert report["static_shapes"] == {"input_ids": [1, SEQ], "attention_mask": [1, SEQ]}
    assert report["failures"] == [], report
    assert report["argmax_agreement"] >= 0.9  # measured 0.96: full uint8 vs the per-channel QAT model


def test_fake_quant_modes_are_restored_after_export(npu_export):
    model, _, _ = npu_export
    modes = {m.quant_mode for m in model.modules() if hasattr(m, "quant_mode")}
    assert modes == {"frozen"}


def text_cnn():
    torch.manual_seed(0)
    return TextCNN(50, 16, [24, 24], 3, 2).eval()


def onnx_and_torch_logits(model, path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, f)[0] for f in feeds])
    with torch.no_grad():
        ref = np.concatenate([model(**{k: torch.from_numpy(v) for k, v in f.items()}).numpy() for f in feeds])
    return got, ref


@pytest.mark.parametrize("profile", ["hexagon-npu", "hexagon-npu-w8a16"])
def test_text_cnn_builds_for_the_npu_with_its_own_padding_mask_and_16_bit_activations_after_its_embedding(
        tmp_path, monkeypatch, profile):
    """A text CNN has no attention: its export needs no mask wrapper and warns of none. Its max over real tokens once
    filled padded positions with -1e4, which gave a uint8 build a step of ~40 and constant logits; in a w8a16 build the
    embedding's 8-bit rows reached the convolution through a Transpose (a quantization violation)."""
    said = []
    monkeypatch.setattr(attention_mask, "log", said.append)
    model = text_cnn()
    facts = export_for_device(model, static_inputs(), tmp_path, load_profile(profile), calib_feeds(), 17)
    assert said == [] and "attention_mask" not in facts["quantization"]
    assert facts["compat"]["quantization_violations"] == [] and facts["compat"]["ok"]
    got, ref = onnx_and_torch_logits(model, tmp_path / "model.onnx",
                                     text_feeds(encoded(200, 2, lo=3, hi=14).ids, NAMES, SEQ))
    assert (got.std(axis=0) > 0.5 * ref.std(axis=0)).all()  # measured 0.99 of it; 1e-5 with the -1e4 fill
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95  # measured 0.99; 0.27 (uint8) and 0.92 (w8a16) before


def test_the_text_students_pool_the_max_over_real_tokens_only():
    """Padded positions are filled with a value the real ones reach or exceed (0 after a ReLU, -1 for an LSTM)."""
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (4, 10))
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    ids[:, 6:] = 0
    cnn, lstm = text_cnn(), TextBiLSTM(50, 16, 12, 2).eval()
    for model in (cnn, lstm):
        model.classifier = nn.Identity()  # the pooled features themselves
    with torch.no_grad():
        features = cnn.convs(cnn.embeddings(ids).transpose(1, 2))
        torch.testing.assert_close(cnn(input_ids=ids, attention_mask=mask), features[:, :, :6].max(dim=2).values)
        # an LSTM reads the real tokens alone the same way (the backward one from the last real token)
        torch.testing.assert_close(lstm(input_ids=ids, attention_mask=mask),
                                   lstm(input_ids=ids[:, :6], attention_mask=mask[:, :6]))


def test_a_trimmed_text_cnn_reads_its_row_map_as_int32_in_an_npu_build():
    """The HTP rejects a Gather of int16 data (QNN error 3110): the full-size wide text CNN's `nearest` row map
    stayed int16 in its w8a16 build (left on the CPU), the model's own `embeddings` being no nn.Embedding once
    remapped."""
    from edgekd.export.vocab import input_embeddings, int32_row_map, remap_embeddings

    model = text_cnn()
    remap_embeddings(model, np.arange(0, 50, 2), exclude={0})
    assert input_embeddings(model) is model.embeddings and model.embeddings.row_of.dtype == torch.int16
    with int32_row_map(model):
        assert model.embeddings.row_of.dtype == torch.int32
    assert model.embeddings.row_of.dtype == torch.int16  # the host build keeps the narrow map


def test_a_device_build_is_as_long_as_the_longest_text_the_position_table_and_the_profile_allow(npu):
    from edgekd.export.stage import device_length

    assert npu.seq_lens == [128, 384]
    assert device_length(text_cnn(), npu, 128) == 128  # no position table: 384 was padding only
    assert device_length(text_cnn(), npu, 512) == 384
    assert device_length(text_cnn(), npu, 64) == 64  # no profile length fits: the texts' own
    bert = qat_bert()  # 512 positions
    assert device_length(bert, npu, 256) == 128 and device_length(bert, npu, None) == 384
    bert.config.max_position_embeddings = 160
    assert device_length(bert, npu, 512) == 128


def test_refuses_when_the_device_lacks_an_operator_and_names_it(tmp_path, npu):
    lacking = npu.model_copy(update={"supported_ops": [o for o in npu.supported_ops if not o.endswith("Gelu")]})
    with pytest.raises(EdgekdError, match=r"hexagon-npu.*no kernel for: com\.microsoft:Gelu \(2 nodes\)"):
        export_for_device(qat_bert(), static_inputs(), tmp_path, lacking, calib_feeds(), 17)
    assert not (tmp_path / "model.onnx").exists()


def test_cpu_profile_path_is_the_qat_export(tmp_path):
    model = qat_bert()
    inputs = static_inputs(8)
    facts = export_for_device(model, inputs, tmp_path, load_profile("host-cpu"), [], 17)
    direct = export_onnx(model, inputs, tmp_path / "direct.onnx", 17)
    assert {k: v for k, v in facts.items() if k not in ("file", "size_mb")} == \
        {k: v for k, v in direct.items() if k not in ("file", "size_mb")}
    g = onnx.load(str(tmp_path / "model.onnx"))
    assert any(d.dim_param for d in g.graph.input[0].type.tensor_type.shape.dim)  # dynamic axes kept
    assert any(i.data_type == onnx.TensorProto.INT8 for i in g.graph.initializer)  # int8 per-channel weights


def test_export_stage_uses_the_device_path_and_records_compatibility(tmp_path, monkeypatch):
    import edgekd.export.stage as stage
    from edgekd.configs import ExportConfig

    model = qat_bert()
    monkeypatch.setattr(stage, "load_model_from_artifact", lambda parent: model)
    splits = {"train": encoded(64, 1), "dev": encoded(60, 2), "test": encoded(20, 3)}
    ctx = SimpleNamespace(recipe=SimpleNamespace(profiles=["hexagon-npu"]), task="text-classification", teacher=None,
                          data=SimpleNamespace(preprocess={}), encoded=lambda split, n=None: splits[split])
    parent = SimpleNamespace(spec={"quant": {"scheme": {}}}, id="qat-1", path=tmp_path / "parent")
    (tmp_path / "out").mkdir()
    # vocabulary: full — this fake context has no tokenizer or train texts (trimming has its own tests)
    result = stage.run_export(ExportConfig(seq_len=SEQ, min_agreement=0.9, vocabulary="full"), parent, ctx,
                              tmp_path / "out", "k")
    extra, validation = result["extra"], result["metrics"]["validation"]
    assert extra["compat"]["fallback_nodes_share"] == 0.0 and extra["compat"]["unsupported_ops"] == []
    assert extra["onnx"]["static_shapes"] and extra["onnx_fp32"]["file"] == "model-fp32.onnx"
    assert validation["failures"] == [] and validation["argmax_agreement"] >= 0.9
    from edgekd.devices import qnn

    # a primary QNN profile's build goes through Qualcomm's compiler too (what `edgekd export --profile` makes)
    assert extra["htp"]["checked"] == qnn.available()
    if qnn.available():
        assert extra["htp"]["examples"] == 20 and extra["htp"]["context"]["same_outputs"]
