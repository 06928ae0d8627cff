"""FLOPs of an ONNX graph's nodes, from the shapes `onnx.shape_inference` gives them.

Counting rule (a multiply-add is 2 operations, as peak figures count them):

- MatMul-like (MatMul, FusedMatMul, MatMulInteger, MatMulIntegerToFloat, QLinearMatMul, Gemm):
  2 x output elements x K, K the shared dimension: [1,128,384] x [384,1536] -> 2*128*1536*384.
  Gemm's bias add is not counted.
- Conv-like (Conv, ConvInteger, QLinearConv): 2 x output elements x (C_in/group x kernel size),
  i.e. 2 x numel(Y) x prod(W.shape[1:]). ConvTranspose: 2 x numel(X) x prod(W.shape[1:]).
- metadata-only ops (Reshape, Squeeze, Unsqueeze, Flatten, Identity, Shape, Size, Constant): 0.
- every other op: the element count of its first output (one operation per element: element-wise
  ops, Softmax, LayerNorm, Q/DQ, Gather, Transpose...). That undercounts the normalisations by a
  small factor; against the matrix products of a transformer it is noise.
- a node whose needed shapes are unknown: None (the caller reports how many).
"""
from __future__ import annotations

import math

import onnx

Shape = tuple[int, ...]
# name -> (ONNX element type, shape or None when unknown/symbolic)
TensorInfo = dict[str, tuple[int, Shape | None]]

MATMUL_LIKE = {"MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "Gemm"}
CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
METADATA_ONLY = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant"}


def _static(shape_proto: onnx.TensorShapeProto) -> Shape | None:
    dims = []
    for d in shape_proto.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            return None
        dims.append(d.dim_value)
    return tuple(dims)


def tensor_info(model: onnx.ModelProto) -> TensorInfo:
    """Element type and static shape of every named tensor of an (inferred) model's main graph."""
    g = model.graph
    info: TensorInfo = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            info[vi.name] = (t.elem_type, _static(t.shape) if t.HasField("shape") else None)
    for init in g.initializer:  # dims are known without loading external data
        info[init.name] = (init.data_type, tuple(init.dims))
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            info[n.output[0]] = (t.data_type, tuple(t.dims))
    return info


def _shape(info: TensorInfo, name: str) -> Shape | None:
    return info.get(name, (0, None))[1] if name else None


def node_flops(node: onnx.NodeProto, info: TensorInfo) -> int | None:
    if node.op_type in METADATA_ONLY:
        return 0
    out = _shape(info, node.output[0]) if node.output else None
    if node.op_type in MATMUL_LIKE:
        a = _shape(info, node.input[0])
        if out is None or not a:
            return None
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[-2] if node.op_type == "Gemm" and trans_a else a[-1]
        return 2 * math.prod(out) * k
    if node.op_type in CONV_WEIGHT_INPUT:
        w = _shape(info, node.input[CONV_WEIGHT_INPUT[node.op_type]])
        x = _shape(info, node.input[0]) if node.op_type == "ConvTranspose" else out
        if x is None or not w:
            return None
        return 2 * math.prod(x) * math.prod(w[1:])
    return None if out is None else math.prod(out)
