"""Device profiles as data (every one loads, estimates carry figures and sources) and operator /
shape / quantization compatibility of ONNX graphs with them (tiny hand-built graphs, hand-checked numbers)."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.devices.compat import check_compatibility
from edgekd.devices.flops import node_flops
from edgekd.devices.profile_folders import shipped_dir
from edgekd.devices.profiles import list_profiles, load_profile
from edgekd.devices.shapes import tensor_info

SHIPPED = sorted(Path(str(shipped_dir())).glob("*.yaml"))
F = TensorProto.FLOAT


@pytest.fixture(scope="module")
def npu():
    return load_profile("hexagon-npu")


@pytest.fixture(scope="module")
def host():
    return load_profile("host-cpu")


def make_model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 8
    return model


def weight(name, shape, dtype=np.float32, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


# ------------------------------------------------------------------------------------ profiles
def test_new_profiles_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"host-cpu", "x86-server-vnni", "rpi5-cortex-a76", "phone-big-core", "hexagon-npu"} <= names
    assert [p.name for p in list_profiles()] == sorted(names)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_profile_loads_with_figures_and_sources(path):
    p = load_profile(str(path))
    assert p.name == path.stem
    if p.measured:
        return
    assert any(s.startswith("http") for s in p.sources), "an estimate needs at least one source URL"
    assert p.peak_int8_gops or p.peak_fp32_gflops
    assert p.memory_bandwidth_gbs and p.memory_budget_mb
    assert p.quantization.reason.strip()


def test_cpu_peaks_match_their_derivation():
    # cores x GHz x ops/cycle, as the YAML comments derive them
    assert load_profile("x86-server-vnni").peak_int8_gops == pytest.approx(40 * 2.3 * 256)
    assert load_profile("rpi5-cortex-a76").peak_fp32_gflops == pytest.approx(4 * 2.4 * 16)
    assert load_profile("rpi5-cortex-a76").memory_bandwidth_gbs == pytest.approx(4 * 4.267, abs=0.01)
    assert load_profile("phone-big-core").peak_int8_gops == pytest.approx(3.3 * 128)


def test_npu_scheme_agrees_with_onnxruntime_qnn_defaults(npu):
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    defaults = inspect.signature(get_qnn_qdq_config).parameters
    as_name = {QuantType.QUInt8: "uint8", QuantType.QInt8: "int8"}
    assert npu.quantization.activation_dtype == as_name[defaults["activation_type"].default]
    assert npu.quantization.weight_dtype == as_name[defaults["weight_type"].default]
    assert defaults["per_channel"].default is False and npu.quantization.weight_granularity == "per-tensor"
    assert npu.quantization.scope == "full" and npu.static_shapes
    assert (npu.execution_provider, npu.fallback_providers) == ("QNNExecutionProvider", ["CPUExecutionProvider"])


def test_npu_ops_cover_a_preprocessed_bert_encoder(npu):
    bert = {"MatMul", "Gemm", "Add", "Mul", "Sub", "Div", "Softmax", "LayerNormalization", "Gelu", "Tanh",
            "Reshape", "Transpose", "Gather", "Where", "Cast", "Unsqueeze", "Concat", "Slice", "Expand",
            "QuantizeLinear", "DequantizeLinear", "Sqrt", "Pow", "ReduceMean", "Equal",
            "Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten"}
    assert bert <= set(npu.supported_ops)
    # Not in QNN's op builders: Erf must be fused into Gelu (qnn_preprocess_model); Shape is folded.
    assert not {"Erf", "Shape", "NonMaxSuppression"} & set(npu.supported_ops)


# ------------------------------------------------------------------------------------ FLOPs
def test_matmul_flops_hand_checked(host):
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", F, ["batch", "seq", 384])],
                   [helper.make_tensor_value_info("y", F, None)], [weight("w", (384, 1536))])
    report = check_compatibility(m, host, seq_len=128)  # batch -> 1, seq -> 128
    assert report["total_flops"] == 2 * 128 * 384 * 1536
    assert report["nodes_without_flops"] == 0 and report["ok"]


def test_conv_and_gemm_flops_hand_checked():
    m = make_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                    helper.make_node("Flatten", ["c"], ["f"]),
                    helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)],
                   [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                   [helper.make_tensor_value_info("y", F, None)],
                   [weight("w", (4, 3, 3, 3)), weight("g", (10, 4 * 8 * 8))])
    inferred = onnx.shape_inference.infer_shapes(m)
    info = tensor_info(inferred)
    conv, flatten, gemm = inferred.graph.node
    assert node_flops(conv, info) == 2 * (4 * 8 * 8) * (3 * 3 * 3)  # 2 x numel(Y) x C_in x k x k
    assert node_flops(flatten, info) == 0
    assert node_flops(gemm, info) == 2 * 10 * 256


# ------------------------------------------------------------------------------ operators
def erf_graph():
    """MatMul -> Erf -> Relu on [1,128,64]: the Erf form of GELU, which QNN has no kernel for."""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                       helper.make_node("Erf", ["h"], ["e"], name="erf"),
                       helper.make_node("Relu", ["e"], ["y"], name="relu")],
                      [helper.make_tensor_value_info("x", F, [1, 128, 64])],
                      [helper.make_tensor_value_info("y", F, [1, 128, 64])], [weight("w", (64, 64))])


def test_unsupported_op_reported_with_node_and_flop_shares(npu, host):
    report = check_compatibility(erf_graph(), npu)
    assert report["unsupported_ops"] == ["Erf"] and report["fallback_nodes"] == ["erf"]
    assert report["fallback_nodes_share"] == pytest.approx(1 / 3)
    # MatMul 2*128*64*64 = 128*8192, Erf and Relu 8192 each: Erf's share is 8192 / (130*8192).
    assert report["total_flops"] == 130 * 8192 and report["fallback_flops"] == 8192
    assert report["fallback_flops_share"] == pytest.approx(1 / 130)
    assert not report["ok"]
    assert check_compatibility(erf_graph(), host)["unsupported_ops"] == []  # the CPU provider runs everything


def test_custom_domain_op_is_unsupported(npu):
    m = make_model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Mystery", ["r"], ["y"], domain="com.example")],
                   [helper.make_tensor_value_info("x", F, [1, 4])], [helper.make_tensor_value_info("y", F, None)],
                   extra_opsets=[helper.make_opsetid("com.example", 1)])
    report = check_compatibility(m, npu)
    assert report["unsupported_ops"] == ["com.example:Mystery"]
    assert report["fallback_nodes_share"] == pytest.approx(1 / 2)
    assert report["nodes_without_flops"] == 1  # the custom op's output shape is unknown


def test_static_shape_chain_is_folded_not_unsupported(npu):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch exports it: folded on static shapes."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
             helper.make_node("Concat", ["bu", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", F, [1, 8, 4])],
                   [helper.make_tensor_value_info("y", F, None)],
                   [const("i0", np.int64(0)), const("ax", np.array([0], np.int64)), const("minus1", np.array([-1], np.int64))])
    report = check_compatibility(m, npu)
    assert report["unsupported_ops"] == [] and report["folded_nodes"] == 4 and report["nodes"] == 1


# --------------------------------------------------------------------------------- shapes
def test_dynamic_input_flagged_on_static_device_only(npu, host):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", F, ["batch", "seq", 64])],
                   [helper.make_tensor_value_info("y", F, None)])
    report = check_compatibility(m, npu, seq_len=384)
    assert report["dynamic_inputs"] == [{"input": "x", "shape": ["batch", "seq", 64]}] and not report["ok"]
    assert report["total_flops"] == 384 * 64 and report["seq_len"] == 384
    assert check_compatibility(m, host)["dynamic_inputs"] == []


# --------------------------------------------------------------------------- quantization
def qdq_everywhere(act=np.uint8, wt=np.uint8, w_scale=np.float32(0.02)):
    """Q/DQ around every op: x -> Q -> DQ -> MatMul(DQ(W)) -> Q -> DQ -> Softmax -> Q -> DQ -> y."""
    zp_a, zp_w = np.asarray(128 if act == np.uint8 else 0, act), np.asarray(128 if wt == np.uint8 else 0, wt)
    zp_w = np.full(np.shape(w_scale), zp_w, wt)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], name="dq_w", axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["h"], name="mm"),
             helper.make_node("QuantizeLinear", ["h", "sa", "za"], ["hq"], name="q_h"),
             helper.make_node("DequantizeLinear", ["hq", "sa", "za"], ["hd"], name="dq_h"),
             helper.make_node("Softmax", ["hd"], ["p"], name="softmax"),
             helper.make_node("QuantizeLinear", ["p", "sp", "za"], ["pq"], name="q_p"),
             helper.make_node("DequantizeLinear", ["pq", "sp", "za"], ["y"], name="dq_p")]
    inits = [numpy_helper.from_array(np.random.default_rng(0).integers(0, 100, (16, 16)).astype(wt), "wq"),
             const("sa", np.float32(0.05)), const("za", zp_a), const("sp", np.float32(1 / 255)),
             const("sw", np.asarray(w_scale, np.float32)), const("zw", zp_w)]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, [1, 8, 16])],
                      [helper.make_tensor_value_info("y", F, [1, 8, 16])], inits)


def test_qdq_everywhere_passes_npu(npu):
    report = check_compatibility(qdq_everywhere(), npu)
    assert report["quantization_violations"] == [] and report["unsupported_ops"] == [] and report["ok"]


def test_float_matmul_fails_npu_but_not_host(npu, host):
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                   [helper.make_tensor_value_info("x", F, [1, 8, 16])],
                   [helper.make_tensor_value_info("y", F, [1, 8, 16])], [weight("w", (16, 16))])
    violations = check_compatibility(m, npu)["quantization_violations"]
    assert [(v["kind"], v["node"]) for v in violations] == [("float_linear", "mm")]
    assert "not from DequantizeLinear" in violations[0]["detail"]
    assert check_compatibility(m, host)["quantization_violations"] == []


def test_cpu_layout_violates_npu_scheme(npu, host):
    """edgekd's CPU layout (int8 per-channel weights) and int8 activations: three NPU violations, none on the host for weights."""
    m = qdq_everywhere(act=np.int8, wt=np.int8, w_scale=np.full(16, 0.02, np.float32))
    kinds = sorted(v["kind"] for v in check_compatibility(m, npu)["quantization_violations"])
    # one activation_dtype report per quantized activation tensor (x, h, p), once per tensor
    assert kinds == ["activation_dtype"] * 3 + ["per_channel_weight", "weight_dtype"]
    host_kinds = sorted(v["kind"] for v in check_compatibility(m, host)["quantization_violations"])
    assert host_kinds == ["activation_dtype"] * 3  # the host wants uint8 activations, int8 per-channel weights


def test_bias_int32_is_not_a_weight_violation(npu):
    m = qdq_everywhere()
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.zeros(16, np.int32), "bq"), const("sb", np.float32(0.001))])
    g.node.insert(3, helper.make_node("DequantizeLinear", ["bq", "sb"], ["bd"], name="dq_b"))
    assert check_compatibility(m, npu)["quantization_violations"] == []


def test_path_input(tmp_path, host):
    path = tmp_path / "m.onnx"
    onnx.save(erf_graph(), str(path))
    assert check_compatibility(path, host)["total_flops"] == 130 * 8192


def test_onnxruntime_qnn_tooling_output_passes_npu(tmp_path, npu, host):
    """The NPU scheme is onnxruntime's: a model quantized by get_qnn_qdq_config() has no violations."""
    from onnxruntime.quantization import CalibrationDataReader, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    float_model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
         helper.make_node("LayerNormalization", ["hb", "g", "be"], ["ln"], axis=-1),
         helper.make_node("Gelu", ["ln"], ["ge"]), helper.make_node("Softmax", ["ge"], ["y"], axis=-1)],
        [helper.make_tensor_value_info("x", F, [1, 8, 16])], [helper.make_tensor_value_info("y", F, [1, 8, 16])],
        [weight("w", (16, 16)), weight("b", (16,), seed=1), weight("g", (16,), seed=2), weight("be", (16,), seed=3)],
        opset=20)
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(float_model, str(src))

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": np.random.default_rng(i).standard_normal((1, 8, 16)).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    quantize(str(src), str(dst), get_qnn_qdq_config(str(src), Calibration()))
    report = check_compatibility(dst, npu)
    assert report["quantization_violations"] == [] and report["ok"]
    # the host's scheme differs on purpose: QNN's uint8 weights are not the CPU kernels' int8
    assert {v["kind"] for v in check_compatibility(dst, host)["quantization_violations"]} == {"weight_dtype"}


def test_identity_is_removed_like_onnxruntime_does(npu):
    m = make_model([helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"], name="relu")],
                   [helper.make_tensor_value_info("x", F, [1, 4])], [helper.make_tensor_value_info("y", F, [1, 4])])
    report = check_compatibility(m, npu)
    assert report["unsupported_ops"] == [] and report["nodes"] == 1 and report["folded_nodes"] == 1
    assert len(m.graph.node) == 2  # the caller's model is not changed


def test_contrib_ops_are_shaped_so_their_flops_count(host):
    """onnxruntime's contrib ops (here com.microsoft:Gelu, as its fusions and QNN exports write) have no
    onnx schema; the shared shape inference (devices/shapes.py) still shapes them and what follows."""
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                    helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft"),
                    helper.make_node("MatMul", ["g", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", F, ["batch", "seq", 16])],
                   [helper.make_tensor_value_info("y", F, None)], [weight("w", (16, 16))],
                   extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    report = check_compatibility(m, host, seq_len=8)
    assert report["nodes_without_flops"] == 0
    assert report["total_flops"] == 2 * (2 * 8 * 16 * 16) + 8 * 16
