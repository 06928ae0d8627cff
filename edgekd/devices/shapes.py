"""Tensor shapes of an ONNX graph at fixed input shapes: the one shape-inference route of `devices/`.

Operator compatibility (`compat.py`, its FLOP shares) and the latency estimator's graph costs
(`graph_costs.py`) both read shapes from here, so that they agree on what every node computes.

The route: graph inputs are fixed (batch 1, every later unknown dim = seq_len), then onnxruntime's
symbolic shape inference runs, with onnx's own inference (data propagation on) as the fallback. Why:
- dynamic-axis exports compute their Reshape targets at run time (Shape -> Gather -> Concat -> Reshape);
  onnxruntime's inference follows those chains, onnx's stops at many of them, and so would every FLOP
  after them (a QDQ 2-layer BERT export at seq 16: 360 of 360 tensors shaped against 235 of 359);
- onnxruntime's knows its contrib ops (Gelu, FusedMatMul, Attention, SkipLayerNormalization: what its
  fusions write, and what a QNN export carries); onnx has no schema for them;
- but it gives up on the whole graph at an op it has no rule for (QOperator graphs' QGemm and
  QLinearGlobalAveragePool, a custom op), and then writes sym_shape_infer_temp.onnx into the working
  directory and raises a bare Exception. Such graphs are not handed to it: onnx's inference shapes
  every node of them it knows, and one onnxruntime run of the graph gives the shapes of the rest.
Static NPU graphs take the same route; fixing their inputs changes nothing.
"""
from __future__ import annotations

import onnx

from ..errors import ModelError

Shape = tuple[int, ...]
# name -> (ONNX element type, shape or None when unknown/symbolic)
TensorInfo = dict[str, tuple[int, Shape | None]]


def fix_input_shapes(model: onnx.ModelProto, seq_len: int | None) -> list[dict]:
    """Fix `model`'s unknown input dims in place (first: batch 1, later: seq_len). Returns the inputs
    that had any, with their shapes as declared ('?' for an unnamed unknown dim)."""
    inits = {i.name for i in model.graph.initializer}
    dynamic = []
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        shown = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in dims]
        if any(isinstance(s, str) for s in shown):
            dynamic.append({"input": inp.name, "shape": shown})
        for k, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if k > 0 and seq_len is None:
                raise ModelError(f"input {inp.name!r} has a symbolic dim {d.dim_param!r}: give a seq_len")
            d.Clear()
            d.dim_value = 1 if k == 0 else int(seq_len)
    return dynamic


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic inference of `model`, or None where it cannot shape the whole graph."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # it needs sympy
        return None
    rules = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0).dispatcher_
    # A node it has no rule for goes to the onnx schema of its op; with neither, it would give up (module doc).
    if not all(n.op_type in rules or onnx.defs.has(n.op_type, "" if n.domain == "ai.onnx" else n.domain)
               for n in model.graph.node):
        return None
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)  # None below opset 7
    except (RuntimeError, AssertionError, KeyError, ValueError, TypeError, IndexError):
        return None  # one of its rules fails on this graph


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """An inferred copy of `model` (its inputs fixed first), by the route in the module doc."""
    inferred = _symbolic(model)
    if inferred is None:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        _run_for_shapes(model, inferred)
    return inferred


def _run_for_shapes(model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Shapes neither inference gave (after an op only onnxruntime knows: onnxruntime's fused graph's QGemm and
    MatMulIntegerToFloat), read from one onnxruntime run of the graph at its fixed input shapes with every such
    tensor exposed as an output; written into `inferred` as value_info. Without them, every FLOP after the first
    such op would count as zero (a fused INT8 graph estimated 2-3x faster than the same model's QDQ graph). A
    graph onnxruntime cannot run keeps what inference gave."""
    import numpy as np

    info = tensor_info(inferred)
    missing = [o for n in model.graph.node for o in n.output if o and shape_of(info, o) is None]
    if not missing:
        return
    try:
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        have = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in missing if name not in have)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        dtypes = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
        feeds = {i.name: np.ones(i.shape, dtype=dtypes.get(i.type, np.float32)) for i in session.get_inputs()}
        values = session.run(missing, feeds)
    except Exception:  # noqa: BLE001 — best effort: onnxruntime raises anything on a graph it cannot run
        return
    for name, value in zip(missing, values):
        value = np.asarray(value)
        inferred.graph.value_info.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))


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


def shape_of(info: TensorInfo, name: str) -> Shape | None:
    return info.get(name, (0, None))[1] if name else None
