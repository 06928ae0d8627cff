"""Device-free costs of an ONNX graph at fixed shapes: FLOPs, bytes moved and a kernel class per node.

Graph costs (device-free). The graph inputs are made static (batch 1, every other symbolic dim =
seq_len), shapes are inferred (both by `shapes.py`), and each node gets FLOPs, bytes moved and a class:
- `int8_matmul`: MatMul/Gemm/Conv whose data input and weight both come from DequantizeLinear of
  int8/uint8 (onnxruntime fuses DQ -> MatMul into integer kernels; Gemm/Conv only with a quantized
  output), and the integer ops themselves;
- `fp32_matmul`: other MatMul/Gemm/Conv;
- `other`: everything else (element-wise, normalisation, softmax, data movement, shape ops).
FLOPs: matmul 2*M*N*K (batched: 2 * output elements * K), conv 2 * output elements * Cin/group *
kernel area (`flops.linear_flops`, the counter compat.py uses too). Element-wise, normalisation and
data-movement ops are not bound by arithmetic: their "FLOPs" are output elements x a per-op cost
relative to an Add (ELEMENT_COST), measured with onnxruntime's profiler on the host (2-layer MiniLM
student, seq 128, 1 thread: Add 0.56 ns per element, GELU with its bias 1.8, LayerNorm 1.0, Softmax
0.74, Transpose 0.78, QuantizeLinear 0.41, embedding Gather 1.4). The calibration fits one efficiency
that turns these into time.
Bytes: inputs + outputs (weights included) at their dtype size; a fused weight/activation DQ counts
at its int8/uint8 size; Gather reads only the rows it gathers; reshapes and shape ops are views.
What onnxruntime removes before running is not counted: Identity/Dropout, Constant, nodes whose
inputs are all constant (constant folding), and DequantizeLinear nodes fused into integer kernels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import ModelError
from ..onnx_wiring import consumers_of
from .flops import FLOAT_LINEAR, INTEGER_LINEAR, LINEAR, linear_flops
from .shapes import TensorInfo, fix_input_shapes, infer_shapes, tensor_info

CLASSES = ("int8_matmul", "fp32_matmul", "other")
REMOVED = {"Identity", "Dropout", "Constant"}  # eliminated by onnxruntime's graph optimiser
VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Size"}  # no data moved
MOVES = {"Transpose", "Concat", "Slice", "Split", "Expand", "Tile", "Pad", "ConstantOfShape", "Range"}
# Cost per output element (per input element for reductions) relative to an Add, measured on the host
# (module doc); unlisted element-wise ops: 1. Erf stands for the fused (Bias)Gelu (see _fused_away).
ELEMENT_COST = {"Erf": 3.3, "Gelu": 3.3, "FastGelu": 3.0, "Tanh": 3.0, "Exp": 2.0, "Log": 2.0, "Sigmoid": 2.0,
                "Softmax": 1.3, "LogSoftmax": 1.3, "LayerNormalization": 1.7, "SkipLayerNormalization": 2.0,
                "BatchNormalization": 1.0, "InstanceNormalization": 1.7, "QuantizeLinear": 0.75,
                "DequantizeLinear": 0.75, "Sqrt": 1.0, "Pow": 1.5, "Div": 1.0}
MOVE_COST = 1.4     # Transpose, Concat, Slice, ...: per output element
GATHER_COST = 2.5   # per gathered element (embedding rows)
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "GlobalAveragePool", "GlobalMaxPool"}

@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    cls: str
    flops: float
    bytes: float


# ------------------------------------------------------------------ graph costs
def _size(dtype: int) -> int:
    return onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize if dtype else 4


def _numel(shape: tuple | None) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def _node_costs(model: onnx.ModelProto) -> list[NodeCost]:
    g = model.graph
    info = tensor_info(model)
    producer = {o: n for n in g.node for o in n.output}
    constant = {i.name for i in g.initializer} | {""}
    consumers = consumers_of(g)

    def quantized_source(name: str) -> int | None:
        """The int8/uint8 dtype behind a DequantizeLinear output, else None."""
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            dtype = info.get(p.input[0], (0, None))[0]
            if dtype in (TensorProto.INT8, TensorProto.UINT8):
                return dtype
        return None

    def is_int8_matmul(n: onnx.NodeProto) -> bool:
        # onnxruntime's QDQ fusions: DQ -> MatMul -> (float) becomes MatMulIntegerToFloat; Gemm and Conv
        # become QGemm / QLinearConv only when their output is quantized again (DQ -> Gemm -> float was
        # measured to stay a float Gemm with its DQs executed, onnxruntime 1.32).
        if n.op_type in INTEGER_LINEAR:
            return True
        if n.op_type not in ("MatMul", "Gemm", "Conv") or len(n.input) < 2:
            return False
        if any(quantized_source(i) is None for i in n.input[:2]):
            return False
        users = consumers.get(n.output[0], [])
        return n.op_type == "MatMul" or (bool(users) and all(u.op_type == "QuantizeLinear" for u in users))

    # Constant folding: onnxruntime folds every node whose inputs are all constant, except
    # DequantizeLinear (kept so that QDQ patterns can be fused; unfused, it runs every inference).
    folded = set()
    for n in g.node:
        if n.op_type == "Constant" or (n.op_type != "DequantizeLinear" and all(i in constant for i in n.input)):
            constant.update(n.output)
            folded.add(id(n))
    fused = _fused_away(g, constant, producer, consumers)
    costs = []
    for n in g.node:
        if n.op_type in REMOVED or id(n) in folded or id(n) in fused:
            continue
        if n.op_type == "DequantizeLinear" and all(is_int8_matmul(c) for c in consumers.get(n.output[0], [None]) if c):
            continue  # fused into the integer kernel
        out = info.get(n.output[0], (0, None))
        out_el = _numel(out[1])
        cls = "other"
        if is_int8_matmul(n):
            cls = "int8_matmul"
        elif n.op_type in FLOAT_LINEAR:
            cls = "fp32_matmul"
        # bytes: a DQ output fused into an integer kernel is read at its 8-bit size
        in_bytes = 0.0
        for i in n.input:
            if not i:
                continue
            dtype, shape = info.get(i, (0, None))
            q = quantized_source(i) if cls == "int8_matmul" else None
            in_bytes += _numel(shape) * _size(q or dtype)
        out_bytes = sum(_numel(info.get(o, (0, None))[1]) * _size(info.get(o, (0, None))[0]) for o in n.output if o)
        if n.op_type in VIEWS:
            nbytes = 0.0
        elif n.op_type in ("Gather", "GatherElements", "GatherND"):
            idx = info.get(n.input[1], (0, None))
            nbytes = 2.0 * out_bytes + _numel(idx[1]) * _size(idx[0])  # only the gathered rows are read
        elif n.op_type in MOVES:
            nbytes = 2.0 * out_bytes
        else:
            nbytes = in_bytes + out_bytes
        costs.append(NodeCost(n.name or n.output[0], n.op_type, cls, _flops(n, info, out_el), nbytes))
    return costs


def _fused_away(g: onnx.GraphProto, constant: set[str], producer: dict, consumers: dict) -> set[int]:
    """Nodes onnxruntime's default (ORT_ENABLE_ALL) CPU optimiser merges into a neighbour, so that
    they cost no launch and no pass over memory: duplicates (common-subexpression elimination);
    the Erf GELU chain Div -> Erf -> Add -> Mul -> Mul (and its bias Add) into one (Bias)Gelu node,
    costed at the Erf; a scalar Mul/Div after a MatMul (MatMulScaleFusion into FusedMatMul)."""
    gone: set[int] = set()
    seen: dict[tuple, onnx.NodeProto] = {}
    for n in g.node:  # CSE, in topological order
        key = (n.op_type, tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
        if n.op_type not in REMOVED and n.input and key in seen:
            gone.add(id(n))
        else:
            seen[key] = n

    def only_user(name: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    for e in g.node:
        if e.op_type != "Erf":
            continue
        div = producer.get(e.input[0])
        add = only_user(e.output[0], "Add")
        mul1 = add and only_user(add.output[0], "Mul")
        mul2 = mul1 and only_user(mul1.output[0], "Mul")
        if not (div is not None and div.op_type in ("Div", "Mul") and div.input[1] in constant and mul1):
            continue
        gone.update(id(x) for x in (div, add, mul1) + ((mul2,) if mul2 and mul2.input[1] in constant else ()))
        bias = producer.get(div.input[0])
        if bias is not None and bias.op_type == "Add" and any(i in constant for i in bias.input):
            gone.add(id(bias))
    for n in g.node:
        if n.op_type in ("Mul", "Div") and n.input[1] in constant:
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "MatMul" and len(consumers.get(src.output[0], [])) == 1:
                gone.add(id(n))
    return gone


def _flops(n: onnx.NodeProto, info: TensorInfo, out_el: int) -> float:
    op = n.op_type
    if op in VIEWS or op in ("Shape", "Size", "ConstantOfShape", "Range"):
        return 0.0
    if op in MOVES:
        return float(out_el * MOVE_COST)
    if op.startswith("Gather"):
        return float(out_el * GATHER_COST)
    if op in LINEAR:
        return float(linear_flops(n, info) or 0)  # unknown shapes: no FLOPs, as for every other op
    if op in REDUCTIONS:
        return float(_numel(info.get(n.input[0], (0, None))[1]))
    if op in ("MaxPool", "AveragePool"):
        kernel = next((list(x.ints) for x in n.attribute if x.name == "kernel_shape"), [1])
        return float(out_el * int(np.prod(kernel)))
    return float(out_el * ELEMENT_COST.get(op, 1))


@functools.lru_cache(maxsize=64)
def _cached_costs(path: str, mtime_ns: int, seq_len: int | None) -> tuple[NodeCost, ...]:
    model = onnx.load(path, load_external_data=False)
    fix_input_shapes(model, seq_len)
    return tuple(_node_costs(infer_shapes(model)))


def graph_costs(onnx_path: str | Path | onnx.ModelProto, seq_len: int | None) -> list[NodeCost]:
    """Per-node FLOPs, bytes and class at batch 1 and the given sequence length."""
    if isinstance(onnx_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(onnx_path)
        fix_input_shapes(model, seq_len)
        return _node_costs(infer_shapes(model))
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX file {str(path)!r} does not exist; export the model first.")
    return list(_cached_costs(str(path.resolve()), path.stat().st_mtime_ns, seq_len))


def summarize(costs: list[NodeCost]) -> dict:
    """FLOPs, bytes and node counts per class (what the time model needs)."""
    s = {c: {"flops": 0.0, "bytes": 0.0, "nodes": 0} for c in CLASSES}
    for c in costs:
        s[c.cls]["flops"] += c.flops
        s[c.cls]["bytes"] += c.bytes
        s[c.cls]["nodes"] += 1
    return s


# ------------------------------------------------------------------ peak figures

