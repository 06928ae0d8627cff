"""Which kernels onnxruntime really runs: integer or float, read from the graph after its optimisations.

A QDQ model only says what *may* run in integers: onnxruntime's graph transformers turn
`DQ -> MatMul -> Q` patterns into integer kernels (QLinearMatMul, MatMulIntegerToFloat, QGemm,
QLinearConv, ...) when they match, and silently leave the float MatMul with dequantized inputs
when they do not (a Transpose in between, a shared input, an unsupported dtype). The only proof is
the optimised graph itself, which onnxruntime writes when asked (`optimized_model_filepath`), and
its profiler, which times each node of that graph. `integer_kernel_report` joins the two: every
weight-bearing layer (a MatMul/Gemm/Conv with a constant weight) and whether it runs as an
integer kernel, the float ops left, and each one's share of the measured time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# onnxruntime CPU kernels that compute in integers (ONNX standard ops and com.microsoft contrib ops).
INTEGER_KERNELS = frozenset({
    "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention",
    "QLinearConv", "ConvInteger", "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QLinearAdd", "QLinearMul",
    "QLinearSoftmax", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid",
    "QLinearConcat", "QLinearReduceMean",
})
# Float kernels that do the heavy lifting of a layer when their weight is a constant.
FLOAT_LAYER_KERNELS = frozenset({
    "MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "ConvTranspose", "Attention",
    "MultiHeadAttention", "LSTM", "GRU", "RNN", "NchwcConv",
    # weight-only: int8/int4 weights dequantized block by block, float activations and float arithmetic
    # (onnxruntime fuses DQ(int8 W) -> MatMul into it when the activation is not quantized)
    "MatMulNBits",
})
# Ops whose weight input is not input 1.
_WEIGHT_INPUT = {"Attention": 1, "LSTM": 1, "GRU": 1, "RNN": 1}


def optimized_graph(path: str | Path, save_to: str | Path, threads: int = 1, level: str = "ORT_ENABLE_ALL"):
    """Write the graph onnxruntime runs for `path` on this host's CPU to `save_to`; returns it (onnx.ModelProto).

    level: ORT_ENABLE_ALL is what every edgekd session runs; ORT_ENABLE_EXTENDED stops before the transforms that
    tie the graph to this processor."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.optimized_model_filepath = str(save_to)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(save_to))


def dequantized_weights(source) -> set[str]:
    """Names of the tensors a source graph dequantizes from int8/uint8 initializers (and their transposes).

    onnxruntime may constant-fold such a DequantizeLinear into a float initializer, which keeps the
    tensor's name: a float layer reading it is a quantized layer left in float.
    """
    g = source.graph
    ints = {i.name for i in g.initializer if i.data_type in (2, 3)}  # UINT8, INT8
    out: set[str] = set()
    for n in g.node:
        if (n.op_type == "DequantizeLinear" and n.input[0] in ints) or (
                n.op_type in ("Transpose", "Identity", "Reshape") and n.input[0] in out):
            out.update(n.output)
    return out


def classify_nodes(graph, dequantized: set[str] = frozenset()) -> dict:
    """{"integer": [node], "float_layers": [(node, quantized)], "float_ops": [node]} of an (optimised) graph.

    A float layer is a FLOAT_LAYER_KERNELS node whose weight is a constant: a layer that could run
    in integers. `quantized` says its weight is stored in int8 and dequantized to feed the float
    kernel — a quantized layer onnxruntime did not fuse into an integer kernel. `dequantized`: the
    tensors the source graph dequantized from int8, which onnxruntime may have constant-folded into
    float initializers of the same name. MatMuls of two activations (attention scores and context)
    are float ops, not layers.
    """
    g = graph.graph
    consts = {i.name for i in g.initializer}
    integer_consts = {i.name for i in g.initializer if i.data_type in (2, 3)}  # UINT8, INT8
    producers = {o: n for n in g.node for o in n.output}
    dequant_names = set(dequantized)

    def weight(name: str) -> tuple[bool, bool]:
        """(constant, quantized) of a node input: int8 data, or dequantized from int8 on the way."""
        quantized = name in dequant_names
        for _ in range(4):  # DQ / Transpose / Cast ... of a constant
            if name in consts or name not in producers:
                break
            node = producers[name]
            if node.op_type not in ("DequantizeLinear", "Transpose", "Cast", "Reshape", "Identity"):
                return False, False
            quantized |= node.op_type == "DequantizeLinear"
            name = node.input[0]
            quantized |= name in dequant_names
        return name in consts, quantized or name in integer_consts

    out: dict[str, list] = {"integer": [], "float_layers": [], "float_ops": []}
    for n in g.node:
        if n.op_type in INTEGER_KERNELS:
            out["integer"].append(n)
        elif n.op_type in FLOAT_LAYER_KERNELS:
            w = _WEIGHT_INPUT.get(n.op_type, 1)
            const, dequantized = weight(n.input[w]) if len(n.input) > w else (False, False)
            if const:
                out["float_layers"].append((n, dequantized))
            else:
                out["float_ops"].append(n)
        elif n.op_type not in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            out["float_ops"].append(n)
    return out


def integer_kernel_report(path: str | Path, save_optimized: str | Path, feed: dict[str, np.ndarray],
                          threads: int = 1) -> dict:
    """The integer-kernel check of one model on this host (see the module docstring).

    `ok` is False when a quantized layer (int8 weight) runs as a float kernel. The report lists the
    float layers (quantized or left in float by design), the float ops by type, and each one's
    share of the profiled kernel time.
    """
    from .op_profile import op_breakdown

    import onnx

    graph = optimized_graph(path, save_optimized, threads)
    kinds = classify_nodes(graph, dequantized_weights(onnx.load(str(path))))
    prof = op_breakdown(save_optimized, feed, threads=threads, warmup=3, runs=10)
    share = prof["node_share"]

    def time_of(nodes) -> float:
        return float(sum(share.get(n.name, ("", 0.0))[1] for n in nodes))

    def time_of_ops(op_types) -> float:
        # by op type: node names are optional in ONNX; a fused node made from unnamed nodes is saved unnamed, and
        # the profiler calls it <op>_<index>, so a join by node name would miss it
        return float(sum(t for op, t in prof["share"].items() if op in op_types))

    float_ops: dict[str, float] = {}
    for n in kinds["float_ops"]:
        float_ops[n.op_type] = float_ops.get(n.op_type, 0.0) + share.get(n.name, ("", 0.0))[1]
    return {
        "ok": not any(q for _, q in kinds["float_layers"]),
        "optimized_graph": Path(save_optimized).name,
        "integer_kernels": {op: sum(1 for n in kinds["integer"] if n.op_type == op)
                            for op in sorted({n.op_type for n in kinds["integer"]})},
        "float_layers": [{"node": n.name, "op": n.op_type, "quantized_weight": q,
                          "time_share": round(share.get(n.name, ("", 0.0))[1], 4)} for n, q in kinds["float_layers"]],
        "time_share": {"integer_kernels": round(time_of_ops(INTEGER_KERNELS), 4),
                       "float_layers": round(time_of([n for n, _ in kinds["float_layers"]]), 4),
                       "float_ops": round(sum(float_ops.values()), 4),
                       "quantize_dequantize": round(time_of_ops({"QuantizeLinear", "DequantizeLinear",
                                                                 "DynamicQuantizeLinear"}), 4)},
        "float_ops": {op: round(s, 4) for op, s in sorted(float_ops.items(), key=lambda kv: -kv[1])},
        "profiled": {"threads": threads, "inputs": {k: list(v.shape) for k, v in feed.items()},
                     "kernel_ms": round(prof["kernel_ms"], 4)},
    }
