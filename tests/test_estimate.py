"""The latency estimator's graph costs on hand-checked graphs, and its time model (no measurement)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import ProfileError
from edgekd.devices.estimate import calibrate, estimate_latency, load_calibration
from edgekd.devices.graph_costs import graph_costs, summarize
from edgekd.devices.profiles import DeviceProfile

M, K, N = 128, 384, 1536


def _out():
    """An output of unknown shape (inferred)."""
    v = helper.make_empty_tensor_value_info("Y")
    v.type.tensor_type.elem_type = TensorProto.FLOAT
    return v


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model


def matmul_model(seq="sequence", k=K, n=N) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((k, n), np.float32), "W")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", seq, k] if isinstance(seq, str) else [1, seq, k])
    y = _out()
    return _model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [x], [y], [w])


def qdq_matmul_model() -> onnx.ModelProto:
    """X -> QuantizeLinear(uint8) -> DQ -> MatMul <- DQ(int8 weight): onnxruntime's integer-kernel pattern."""
    inits = [
        numpy_helper.from_array(np.zeros((K, N), np.int8), "Wq"),
        numpy_helper.from_array(np.full(N, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(N, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zp"], ["Xq"], name="q"),
        helper.make_node("DequantizeLinear", ["Xq", "x_scale", "x_zp"], ["Xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zp"], ["Wd"], name="dq_w", axis=1),
        helper.make_node("MatMul", ["Xd", "Wd"], ["Y"], name="mm"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "sequence", K])
    y = _out()
    return _model(nodes, [x], [y], inits)


def profile(name="dev", int8=1000.0, fp32=250.0, bw=20.0, threads=(1,)) -> DeviceProfile:
    return DeviceProfile(name=name, description="test device", measured=False, threads=list(threads), seq_lens=[128],
                         quantization={"activation_dtype": "uint8"}, peak_int8_gops=int8, peak_fp32_gflops=fp32,
                         memory_bandwidth_gbs=bw, memory_budget_mb=None, sources=["test"])


CAL = {"host": {"peak_fp32_gflops": 100.0, "peak_int8_gops": 200.0, "memory_bandwidth_gbs": 10.0, "cores": 2},
       "params": {"eff": {"int8_matmul": 0.3, "fp32_matmul": 0.5, "other": 0.05}, "eff_mem": 0.5,
                  "overhead_ms": 0.002, "overhead_thread": 0.5,
                  "alpha": {"int8_matmul": 0.8, "fp32_matmul": 0.9, "other": 0.5}}}


def test_matmul_flops_and_bytes_are_hand_checked():
    [c] = graph_costs(matmul_model(seq=M), None)
    assert c.cls == "fp32_matmul"
    assert c.flops == 2 * M * K * N
    assert c.bytes == 4 * (M * K + K * N + M * N)


def test_symbolic_sequence_dim_is_fixed_to_seq_len_at_batch_1():
    [c64] = graph_costs(matmul_model(), 64)
    [c128] = graph_costs(matmul_model(), 128)
    assert c64.flops == 2 * 64 * K * N and c128.flops == 2 * c64.flops


def test_add_bytes_count_inputs_broadcast_and_output():
    b = numpy_helper.from_array(np.zeros(K, np.float32), "B")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, M, K])
    y = _out()
    [c] = graph_costs(_model([helper.make_node("Add", ["X", "B"], ["Y"])], [x], [y], [b]), None)
    assert c.cls == "other" and c.flops == M * K
    assert c.bytes == 4 * (M * K + K + M * K)


def test_embedding_gather_reads_only_the_gathered_rows():
    table = numpy_helper.from_array(np.zeros((30522, K), np.float32), "E")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, M])
    y = _out()
    [c] = graph_costs(_model([helper.make_node("Gather", ["E", "ids"], ["Y"])], [ids], [y], [table]), None)
    assert c.bytes == 2 * 4 * M * K + 8 * M  # not the 47 MB table


def test_qdq_matmul_is_int8_and_fused_dq_is_free():
    costs = {c.name: c for c in graph_costs(qdq_matmul_model(), M)}
    assert set(costs) == {"q", "mm"}  # both DQs are fused into the integer kernel
    assert costs["mm"].cls == "int8_matmul"
    assert costs["mm"].flops == 2 * M * K * N
    assert costs["mm"].bytes == M * K + K * N + 4 * M * N  # uint8 activation, int8 weight, float output
    assert costs["q"].cls == "other"
    [plain] = graph_costs(matmul_model(), M)
    assert plain.cls == "fp32_matmul"


def test_estimate_is_labelled_positive_and_split_by_op_type(tmp_path):
    onnx.save(qdq_matmul_model(), str(tmp_path / "q.onnx"))
    r = estimate_latency(tmp_path / "q.onnx", profile(), 128, 1, calibration=CAL)
    assert r["estimated"] is True and r["ms"] > 0
    assert r["profile"] == "dev" and r["seq_len"] == 128 and r["threads"] == 1
    assert set(r["per_op_type"]) == {"MatMul (int8)", "QuantizeLinear"}
    assert sum(r["per_op_type"].values()) == pytest.approx(r["ms"])
    assert estimate_latency(tmp_path / "q.onnx", profile(), None, 1, calibration=CAL)["seq_len"] == 128


def test_twice_the_peak_lowers_a_compute_bound_estimate(tmp_path):
    onnx.save(matmul_model(k=1024, n=4096), str(tmp_path / "m.onnx"))
    slow = estimate_latency(tmp_path / "m.onnx", profile(fp32=100.0), 512, 1, calibration=CAL)["ms"]
    fast = estimate_latency(tmp_path / "m.onnx", profile(fp32=200.0), 512, 1, calibration=CAL)["ms"]
    assert fast < slow
    assert fast / slow < 0.6  # compute-bound: close to half


def test_more_threads_lower_a_compute_bound_estimate(tmp_path):
    onnx.save(matmul_model(k=1024, n=4096), str(tmp_path / "m.onnx"))
    dev = profile(threads=(1, 4))
    one = estimate_latency(tmp_path / "m.onnx", dev, 512, 1, calibration=CAL)["ms"]
    four = estimate_latency(tmp_path / "m.onnx", dev, 512, 4, calibration=CAL)["ms"]
    assert four < one / 2


def test_calibrate_recovers_a_model_it_generated(tmp_path):
    host = {**CAL["host"], "mhz": 1000.0}
    cases = []
    for i, (k, n) in enumerate(((64, 64), (384, 1536), (1024, 1024))):
        path = tmp_path / f"m{i}.onnx"
        onnx.save(matmul_model(k=k, n=n), str(path))
        for seq in (8, 128):
            for threads in (1, 2):
                ms = estimate_latency(path, profile(fp32=100.0, int8=200.0, bw=10.0, threads=(1, 2)), seq, threads,
                                      calibration=CAL)["ms"]
                cases.append({"onnx_path": str(path), "seq_len": seq, "threads": threads, "measured_ms": ms})
    cal = calibrate(cases, host=host)
    assert cal["fit"]["max_abs_rel_error"] < 0.02
    assert cal["params"]["alpha"]["fp32_matmul"] == pytest.approx(0.9)


def test_missing_calibration_says_how_to_make_it(tmp_path):
    with pytest.raises(ProfileError, match="python -m benchmarks.estimator_host"):
        load_calibration(tmp_path / "none.json")


def test_summary_totals_by_class():
    s = summarize(graph_costs(qdq_matmul_model(), M))
    assert s["int8_matmul"]["nodes"] == 1 and s["other"]["nodes"] == 1 and s["fp32_matmul"]["nodes"] == 0


def test_qdq_gemm_with_float_output_stays_float_and_its_dqs_run():
    """onnxruntime fuses DQ -> Gemm into QGemm only when the output is quantized again."""
    model = qdq_matmul_model()
    mm = next(n for n in model.graph.node if n.op_type == "MatMul")
    mm.op_type = "Gemm"
    model.graph.input[0].type.tensor_type.shape.dim.pop(0)  # Gemm is 2-D: [sequence, K]
    costs = {c.name: c for c in graph_costs(model, M)}
    assert costs["mm"].cls == "fp32_matmul"
    assert {"dq_x", "dq_w"} <= set(costs)


def test_erf_gelu_chain_costs_one_node_like_onnxruntimes_fusion():
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("sqrt2", 1.4142135), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("Div", ["X", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["X", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["Y"])]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, M, N])
    [c] = graph_costs(_model(nodes, [x], [_out()], consts), None)
    assert c.op_type == "Erf" and c.bytes == 2 * 4 * M * N


def test_an_op_without_shape_rules_leaves_only_itself_unshaped(tmp_path, monkeypatch):
    """onnxruntime's symbolic inference gives up on a whole graph at an unknown op (and writes a file into
    the working directory); such a graph goes to onnx's inference, which still shapes the rest."""
    monkeypatch.chdir(tmp_path)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, M, K])
    nodes = [helper.make_node("Relu", ["X"], ["r"], name="relu"),
             helper.make_node("Mystery", ["r"], ["Y"], name="mystery", domain="com.example")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [_out()]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    costs = {c.name: c for c in graph_costs(model, None)}
    assert costs["relu"].flops == M * K and costs["mystery"].flops == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_layouts_of_one_model_that_measure_alike_on_the_host_are_estimated_alike_on_every_profile(text_run, tmp_path):
    """QAT's QDQ graph, onnxruntime's fused graph of it (com.microsoft QGemm and MatMulIntegerToFloat, which neither
    shape inference shapes: their shapes come from one onnxruntime run) and dynamic INT8 of the float twin: where two
    measure within 1.5x of each other here, every profile's estimate keeps them within 1.5x (before, the fused
    graph's integer MatMuls counted no FLOPs: estimated 2-3x faster than its own QDQ graph)."""
    from itertools import combinations

    from edgekd.devices.feeds import encoded_feeds, model_input_names
    from edgekd.devices.profile_folders import profile_files
    from edgekd.devices.profiles import load_profile
    from edgekd.export.host_graph import fused_host_graph
    from edgekd.export.layout import dynamic_int8, time_models
    from edgekd.data.batching import Encoded

    root, _, _ = text_run
    (export,) = (root / "out" / "stages").glob("*-export-*")
    layouts = {"qdq": export / "model.onnx",
               "fused": fused_host_graph(export / "model.onnx", tmp_path / "fused.onnx")[0],
               "dynamic": dynamic_int8(export / "model-fp32.onnx", tmp_path / "dynamic.onnx", False)}
    rng = np.random.default_rng(0)
    data = Encoded(np.zeros(4, dtype=np.int64), ids=[list(rng.integers(5, 30, 32)) for _ in range(4)])
    measured = time_models(layouts, encoded_feeds(data, model_input_names(layouts["qdq"]), 32), rounds_n=1)
    alike = [(a, b) for a, b in combinations(layouts, 2) if max(measured[a], measured[b]) / min(measured[a], measured[b]) <= 1.5]
    assert alike, measured  # the fused graph runs QDQ's own kernels: at least that pair measures alike
    for name in profile_files():
        profile = load_profile(name)
        est = {k: estimate_latency(p, profile, 32, 1)["ms"] for k, p in layouts.items()}
        for a, b in alike:
            assert max(est[a], est[b]) / min(est[a], est[b]) <= 1.5, (name, a, b, est, measured)
