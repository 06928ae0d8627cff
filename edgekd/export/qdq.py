"""Graph pass: fold fake-quantized weights into int8 initializers.

torch's exporter writes a fake-quantized weight as float initializer -> QuantizeLinear ->
DequantizeLinear (-> Transpose for Linear layers). Folding computes the int8 tensor once, so the
file stores 1 byte per weight (4x smaller) and onnxruntime sees the canonical
`DQ(int8 weight) -> MatMul/Conv` pattern its integer kernels are selected on. A Transpose between
DQ and MatMul is pushed into the int8 initializer (and the DQ axis remapped) for the same reason.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return consts


def _axis(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return a.i
    return 1


def _set_axis(node: onnx.NodeProto, axis: int) -> None:
    for a in node.attribute:
        if a.name == "axis":
            a.i = axis
            return
    node.attribute.append(onnx.helper.make_attribute("axis", axis))


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Fold in place; returns the number of weights folded."""
    g = model.graph
    consts = _constants(g)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    remove: list[onnx.NodeProto] = []
    folded = 0
    for q in list(g.node):
        if q.op_type != "QuantizeLinear" or not all(i in consts for i in q.input[:3]):
            continue
        users = consumers.get(q.output[0], [])
        if len(users) != 1 or users[0].op_type != "DequantizeLinear":
            continue
        dq = users[0]
        w, scale, zp = consts[q.input[0]], consts[q.input[1]], consts[q.input[2]]
        axis = _axis(q)
        if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along `axis`
            shape = [1] * w.ndim
            shape[axis] = -1
            s, z = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
        else:
            s, z = scale, zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        qw = np.clip(np.round(w / s) + z, info.min, info.max).astype(zp.dtype)

        # DQ -> Transpose(perm=[1,0]) -> MatMul: store the int8 weight already transposed.
        dq_users = consumers.get(dq.output[0], [])
        if len(dq_users) == 1 and dq_users[0].op_type == "Transpose" and qw.ndim == 2:
            tr = dq_users[0]
            perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), [1, 0])
            if perm == [1, 0]:
                qw = qw.T.copy()
                _set_axis(dq, 1 - _axis(dq))
                dq.output[0] = tr.output[0]
                remove.append(tr)
        name = q.input[0] + "_quantized"
        g.initializer.append(numpy_helper.from_array(qw, name))
        dq.input[0] = name
        remove.append(q)
        folded += 1
    for n in remove:
        g.node.remove(n)
    _drop_unused_initializers(g)
    return folded


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
