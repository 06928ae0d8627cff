"""Constant folding, as onnxruntime does once at load time, before it partitions a graph.

An execution provider is offered the folded graph (Identity nodes removed too), so that is
what operator compatibility must look at: torch exports shape arithmetic (Shape -> Gather ->
Unsqueeze -> Concat -> Reshape, ConstantOfShape, Range) that onnxruntime evaluates away when
shapes are static. Folding here also gives shape inference concrete shapes, so every MatMul gets a FLOP
count. Values come from `onnx.reference`; shapes from `shapes.py`.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from .shapes import infer_shapes, tensor_info

# onnxruntime keeps Q/DQ (its QDQ selectors pick integer kernels from them); random ops differ per run.
NEVER_FOLDED = {"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
                "RandomUniformLike", "Multinomial", "Bernoulli"}


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(math.prod(shape), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], dtype=np.int64)


class _Folder:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.opsets = {o.domain or "": o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
        self.protos = {i.name: i for i in self.graph.initializer}
        self.values: dict[str, np.ndarray] = {}
        self.shapes = {k: v[1] for k, v in tensor_info(model).items()}

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.values and name in self.protos:
            proto = self.protos[name]
            if proto.data_location == onnx.TensorProto.EXTERNAL:
                return None  # not loaded: such a constant cannot be evaluated here
            self.values[name] = numpy_helper.to_array(proto)
        return self.values.get(name)

    def evaluate(self, node: onnx.NodeProto) -> list[np.ndarray] | None:
        if node.op_type in ("Shape", "Size") and self.shapes.get(node.input[0]) is not None:
            return [_shape_value(node, self.shapes[node.input[0]])]
        if (node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            return None
        feeds = {i: self.value(i) for i in node.input if i}
        if any(v is None for v in feeds.values()):
            return None
        try:
            # the values the runtime computes, as it computes them: a log of 0 whose result a later Where discards
            # (MPNet's relative-position buckets) is arithmetic of the model, not an error to warn of
            with np.errstate(divide="ignore", invalid="ignore"):
                return list(ReferenceEvaluator(node, opsets=self.opsets).run(None, feeds))
        except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError):
            return None  # the reference evaluator cannot run it: it stays a node, as it may in onnxruntime

    def fold_once(self) -> int:
        g = self.graph
        keep: list[onnx.NodeProto] = []
        folded: list[str] = []
        for node in g.node:  # ONNX requires topological order, so producers come first
            outs = self.evaluate(node)
            if outs is None:
                keep.append(node)
                continue
            for name, v in zip(node.output, outs):
                if name:
                    self.values[name] = np.asarray(v)
                    folded.append(name)
        if not folded:
            return 0
        used = {i for n in keep for i in n.input} | {o.name for o in g.output}
        new = [numpy_helper.from_array(self.values[n], n) for n in folded if n in used]
        stale = {t.name for t in new}
        value_info = [v for v in g.value_info if v.name not in stale]
        del g.value_info[:]
        g.value_info.extend(value_info)
        g.initializer.extend(new)
        removed = len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
        return removed


def _eliminate_identities(graph: onnx.GraphProto) -> int:
    """Drop Identity nodes by rewiring their consumers, as onnxruntime's basic optimizations do."""
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs}
    if not alias:
        return 0

    def source(name: str) -> str:
        while name in alias:  # Identity chains
            name = alias[name]
        return name

    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = source(name)
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    return removed


def fold_constants(model: onnx.ModelProto, max_rounds: int = 8) -> tuple[onnx.ModelProto, int]:
    """Shape-infer and fold until nothing changes. Returns the inferred, folded copy and how many nodes were
    folded (Identity nodes removed included). `model` itself is not changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    folded = _eliminate_identities(model.graph)
    for _ in range(max_rounds):
        # A fold can make a shape static (an Expand's target becomes known), which lets a Shape fold next round.
        model = infer_shapes(model)
        n = _Folder(model).fold_once()
        if not n:
            return model, folded
        folded += n
    return infer_shapes(model), folded
