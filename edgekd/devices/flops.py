"""FLOPs of an ONNX graph's nodes, from the shapes `shapes.py` infers: the one FLOP counter of edgekd.

Counting rule (a multiply-add is 2 operations, as peak figures count them):

- MatMul-like (MatMul, FusedMatMul, MatMulInteger, MatMulIntegerToFloat, QLinearMatMul, Gemm):
  2 x output elements x K, K the shared dimension: [1,128,384] x [384,1536] -> 2*128*1536*384.
  Gemm's bias add is not counted.
- Conv-like (Conv, ConvInteger, QLinearConv): 2 x output elements x (C_in/group x kernel size),
  i.e. 2 x numel(Y) x prod(W.shape[1:]). ConvTranspose: 2 x numel(X) x prod(W.shape[1:]).
- metadata-only ops (Reshape, Squeeze, Unsqueeze, Flatten, Identity, Shape, Size, Constant): 0.
- every other op: the element count of its first output (one operation per element: element-wise
  ops, Softmax, LayerNorm, Q/DQ, Gather, Transpose...). That undercounts the normalisations by a
  small factor; against the matrix products of a transformer it is noise. (The latency estimator
  weighs these ops by their measured cost instead: graph_costs.py.)
- a node whose needed shapes are unknown: None (the caller reports how many).
"""
from __future__ import annotations

import math

import onnx

from .shapes import TensorInfo, shape_of

MATMUL_LIKE = {"MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "Gemm"}
CONV_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
LINEAR = MATMUL_LIKE | set(CONV_WEIGHT_INPUT)  # the ops whose FLOPs are matrix products
INTEGER_LINEAR = {"MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "ConvInteger", "QLinearConv"}
FLOAT_LINEAR = LINEAR - INTEGER_LINEAR
METADATA_ONLY = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant"}


def linear_flops(node: onnx.NodeProto, info: TensorInfo) -> int | None:
    """FLOPs of a node of a LINEAR op (rule in the module doc); None when its shapes are unknown."""
    out = shape_of(info, node.output[0]) if node.output else None
    if node.op_type in MATMUL_LIKE:
        a = shape_of(info, node.input[0])
        if out is None or not a:
            return None
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[-2] if node.op_type == "Gemm" and trans_a else a[-1]
        return 2 * math.prod(out) * k
    w = shape_of(info, node.input[CONV_WEIGHT_INPUT[node.op_type]])
    x = shape_of(info, node.input[0]) if node.op_type == "ConvTranspose" else out
    if x is None or not w:
        return None
    return 2 * math.prod(x) * math.prod(w[1:])


def node_flops(node: onnx.NodeProto, info: TensorInfo) -> int | None:
    if node.op_type in METADATA_ONLY:
        return 0
    if node.op_type in LINEAR:
        return linear_flops(node, info)
    out = shape_of(info, node.output[0]) if node.output else None
    return None if out is None else math.prod(out)
