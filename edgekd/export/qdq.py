"""Graph pass: fold fake-quantized weights into int8 initializers.

torch's exporter writes a fake-quantized weight as float initializer -> QuantizeLinear ->
DequantizeLinear (-> Transpose for Linear layers). Folding computes the int8 tensor once, so the
file stores 1 byte per weight (4x smaller) and onnxruntime sees the canonical
`DQ(int8 weight) -> MatMul/Conv` pattern its integer kernels are selected on. A Transpose between
DQ and MatMul is pushed into the int8 initializer (and the DQ axis remapped) for the same reason.

A quantized embedding table comes out as `DQ(int8 table, per-row scales) -> Gather`: run as is,
every inference would dequantize the whole table (30,522 x 384 floats for BERT's vocabulary) to
read a few rows, and onnxruntime keeps DQ nodes out of constant folding. `gather_quantized_rows`
swaps the order: Gather the int8 rows and their scales, then Cast and Mul only what was gathered.

torch exports a Linear on a 2-D input (BERT's pooler, the classifier) as Gemm with a float bias,
which onnxruntime 1.32 leaves in float (measured: FusedGemm/Gemm; rewritten as MatMul + Add, its
MatMulAddFusion turns it back into a float Gemm); `quantize_gemm_bias` gives it the int32 bias of
the QDQ format, and onnxruntime then runs it as QGemm.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..onnx_wiring import consumers_of


def _constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    for n in g.node:  # the exporter sometimes passes a parameter through Identity (in graph order)
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
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
    consumers = consumers_of(g)
    remove: list[onnx.NodeProto] = []
    created: dict[str, np.ndarray] = {}
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
        # a weight quantized twice (DeBERTa-v3's shared query/key projections also read the position embeddings)
        # folds once where both give the same integers
        name = q.input[0] + "_quantized"
        same = created.get(name)
        if same is None or not np.array_equal(same, qw):
            name = name if same is None else f"{name}_{sum(k.startswith(name) for k in created)}"
            created[name] = qw
            g.initializer.append(numpy_helper.from_array(qw, name))
        dq.input[0] = name
        remove.append(q)
        folded += 1
    for n in remove:
        g.node.remove(n)
    _drop_unused_initializers(g)
    return folded


def gather_quantized_rows(model: onnx.ModelProto) -> list[str]:
    """Rewrite DQ(int8 table, axis 0) -> Gather(axis 0) into Gather(int8) -> Cast -> Mul(Gather(scales)).

    In place; returns the names of the tables rewritten. Only symmetric tables (zero point 0) whose
    every consumer is a row Gather are rewritten; anything else is left as it was.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers = consumers_of(g)
    rewritten: list[str] = []
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        if dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        table = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]])
        zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else None
        users = consumers.get(dq.output[0], [])
        per_row = scale.ndim == 1 and scale.size == table.shape[0] and _axis(dq) == 0
        if (table.ndim != 2 or not users or (zp is not None and np.any(zp != 0))
                or not (per_row or scale.size == 1)
                or any(u.op_type != "Gather" or u.input[0] != dq.output[0] or _axis_or(u, 0) != 0 for u in users)):
            continue
        scale_name = dq.input[0] + "_row_scales" if per_row else dq.input[1]
        if per_row:  # [V, 1]: a gathered [.., 1] column broadcasts over the hidden width
            g.initializer.append(numpy_helper.from_array(scale.reshape(-1, 1).astype(np.float32), scale_name))
        for gather in users:
            out, idx, base = gather.output[0], gather.input[1], gather.output[0]
            new = [onnx.helper.make_node("Gather", [dq.input[0], idx], [base + "_int8"], axis=0,
                                         name=gather.name + "_int8"),
                   onnx.helper.make_node("Cast", [base + "_int8"], [base + "_float"], to=onnx.TensorProto.FLOAT,
                                         name=gather.name + "_cast")]
            if per_row:
                new.append(onnx.helper.make_node("Gather", [scale_name, idx], [base + "_scale"], axis=0,
                                                 name=gather.name + "_scale"))
            new.append(onnx.helper.make_node("Mul", [base + "_float", base + "_scale" if per_row else scale_name],
                                             [out], name=gather.name + "_dequant"))
            at = list(g.node).index(gather)
            g.node.remove(gather)
            for k, node in enumerate(new):
                g.node.insert(at + k, node)
        g.node.remove(dq)
        rewritten.append(dq.input[0])
    _drop_unused_initializers(g)
    return rewritten


def quantize_gemm_bias(model: onnx.ModelProto) -> int:
    """Give each Gemm whose A and B are dequantized an int32 bias, DQ(round(C / (s_a * s_b)), s_a * s_b).

    In place; returns the number of Gemms changed. That is the QDQ form of a bias; onnxruntime's
    QDQ selector fuses DQ(A), DQ(B), DQ(int32 C) -> Gemm into QGemm, and leaves a Gemm with a
    float bias in float.
    """
    g = model.graph
    consts = _constants(g)
    producers = {o: n for n in g.node for o in n.output}
    done = 0
    for gemm in [n for n in g.node if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in consts]:
        dqa, dqb = producers.get(gemm.input[0]), producers.get(gemm.input[1])
        if not (dqa is not None and dqb is not None and dqa.op_type == dqb.op_type == "DequantizeLinear"
                and dqa.input[1] in consts and dqb.input[1] in consts and consts[dqa.input[1]].size == 1):
            continue
        bias = consts[gemm.input[2]].astype(np.float64)
        scale = (consts[dqa.input[1]].astype(np.float64) * consts[dqb.input[1]].astype(np.float64)).reshape(-1)
        if scale.size not in (1, bias.size):
            continue
        info = np.iinfo(np.int32)
        q = np.clip(np.round(bias / scale), info.min, info.max).astype(np.int32)
        name = gemm.input[2] + "_int32"
        g.initializer.extend([numpy_helper.from_array(q, name),
                              numpy_helper.from_array(scale.astype(np.float32), name + "_scale")])
        dq = onnx.helper.make_node("DequantizeLinear", [name, name + "_scale"], [name + "_dq"], axis=0,
                                   name=gemm.name + "_bias_dq")
        gemm.input[2] = name + "_dq"
        g.node.insert(list(g.node).index(gemm), dq)
        done += 1
    _drop_unused_initializers(g)
    return done


def _axis_or(node: onnx.NodeProto, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), default)


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    """Drop initializers and Constant nodes nothing reads any more (e.g. the zero points of folded tables)."""
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used]:
        g.node.remove(n)
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
