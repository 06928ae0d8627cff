"""Can this ONNX model run on this device profile as the device wants it? (a static check: no session runs it)

`check_compatibility` reports three kinds of trouble:

- operators the device's execution provider has no kernel for (they fall back to the CPU provider,
  and every switch copies tensors between the two), with the share of nodes and of FLOPs that
  fall back (FLOPs from `flops.py`, after shape inference (`shapes.py`) with the inputs fixed to
  batch 1 and `seq_len`);
- symbolic input dimensions, on a device that needs static shapes (QNN refuses them);
- quantization that is not the device's scheme: activation or weight dtype, per-channel weights
  where the device needs per-tensor, and, for scope `full`, ops the device would run in float.

What onnxruntime folds or removes before partitioning is left out of every count, as it never
reaches an execution provider (`fold.py`): Constant and Identity nodes, nodes whose inputs are all
constants, and Shape/Size of a tensor whose shape is static (so a static-shape export's Shape ->
Gather -> Concat -> Reshape chains are not reported as unsupported). Q/DQ nodes are never folded:
onnxruntime keeps them to select integer kernels.
"""
from __future__ import annotations

from pathlib import Path

import onnx

from ..onnx_wiring import consumers_of
from .flops import FLOAT_LINEAR, node_flops
from .fold import fold_constants
from .profiles import DeviceProfile
from .shapes import TensorInfo, fix_input_shapes, tensor_info

QDQ = {"QuantizeLinear", "DequantizeLinear"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
INT8_NAMES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8"}


def op_key(node: onnx.NodeProto) -> str:
    """How `supported_ops` names an op: 'MatMul' in the default domain, 'com.microsoft:Gelu' outside it."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def _quant_dtype(name: str, info: TensorInfo) -> str:
    elem = info.get(name, (0, None))[0]
    return INT8_NAMES.get(elem, onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown")


def _quantization_violations(graph: onnx.GraphProto, profile: DeviceProfile, info: TensorInfo,
                             consts: set[str], accelerated: list[onnx.NodeProto]) -> list[dict]:
    scheme = profile.quantization
    producer = {o: n for n in graph.node for o in n.output}
    # A weight is a constant, or a Q of a constant (an unfolded fake-quantized weight).
    weights = set(consts) | {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in consts}
    out: list[dict] = []
    seen: set[str] = set()
    for n in graph.node:
        if n.op_type not in QDQ:
            continue
        q_tensor = n.output[0] if n.op_type == "QuantizeLinear" else n.input[0]
        if q_tensor in weights:
            if n.op_type != "DequantizeLinear":
                continue  # its DQ is checked: one report per weight
            dtype = _quant_dtype(q_tensor, info)
            if dtype == "int32":
                continue  # Conv/Gemm biases are int32 by convention, on every device
            # w8a16: Qualcomm's tooling quantizes a constant that enters an op as an activation (a bias Add, an
            # attention scale, an embedding table read by Gather) at the activation type; matrix weights stay 8-bit
            allowed = {scheme.weight_dtype} | ({scheme.activation_dtype} if scheme.activation_dtype == "uint16" else set())
            if dtype not in allowed:
                out.append({"kind": "weight_dtype", "node": n.name, "op": n.op_type,
                            "detail": f"weight {q_tensor!r} is {dtype}; {profile.name} wants {scheme.weight_dtype}"})
            scale = info.get(n.input[1], (0, None))[1]
            if scheme.weight_granularity == "per-tensor" and scale and len(scale) == 1 and scale[0] > 1:
                out.append({"kind": "per_channel_weight", "node": n.name, "op": n.op_type,
                            "detail": f"weight {q_tensor!r} has {scale[0]} scales; {profile.name} needs per-tensor"})
        elif q_tensor not in seen:
            seen.add(q_tensor)
            dtype = _quant_dtype(q_tensor, info)
            # w8a16: rows gathered from an 8-bit table stay 8-bit until a convert to 16 bits after the lookup
            gathered = (scheme.activation_dtype == "uint16" and dtype == scheme.weight_dtype
                        and n.op_type == "QuantizeLinear" and getattr(producer.get(n.input[0]), "op_type", "") == "Gather")
            if dtype != scheme.activation_dtype and not gathered:
                out.append({"kind": "activation_dtype", "node": n.name, "op": n.op_type,
                            "detail": f"activation {q_tensor!r} is {dtype}; {profile.name} wants {scheme.activation_dtype}"})
    if scheme.scope == "full":
        out += _float_ops(graph, info, accelerated, producer)
    return out


def _float_ops(graph: onnx.GraphProto, info: TensorInfo, accelerated: list[onnx.NodeProto],
               producer: dict[str, onnx.NodeProto]) -> list[dict]:
    """Full scope: every op on the device reads its float inputs from DQ and writes float outputs only to Q."""
    consumers = consumers_of(graph)
    graph_outputs = {o.name for o in graph.output}

    def is_float(name: str) -> bool:
        return bool(name) and info.get(name, (0, None))[0] in FLOAT_TYPES

    out = []
    for n in accelerated:
        if n.op_type in QDQ:
            continue
        bad_in = [i for i in n.input
                  if is_float(i) and getattr(producer.get(i), "op_type", None) != "DequantizeLinear"]
        bad_out = [o for o in n.output if is_float(o) and (
            o in graph_outputs or any(c.op_type != "QuantizeLinear" for c in consumers.get(o, [])))]
        if bad_in or bad_out:
            parts = ([f"float input(s) {bad_in} not from DequantizeLinear"] if bad_in else []) + (
                [f"float output(s) {bad_out} not only into QuantizeLinear"] if bad_out else [])
            out.append({"kind": "float_linear" if n.op_type in FLOAT_LINEAR else "float_op", "node": n.name,
                        "op": op_key(n), "detail": "; ".join(parts) + " (scope full: the device runs integer ops)"})
    return out


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from ..onnx_file import check_onnx_file  # refuses missing, truncated and unsafe files with clear errors

    return check_onnx_file(Path(model))


def check_compatibility(model: onnx.ModelProto | str | Path, profile: DeviceProfile,
                        seq_len: int | None = None) -> dict:
    """Operator, shape and quantization compatibility of `model` with `profile` (see the module doc).

    `seq_len` fixes the symbolic dims after the first (default: the profile's first sequence length).
    Operators are checked on the model with its inputs so fixed, i.e. as a static-shape device must
    get it; a dynamic input is still reported in `dynamic_inputs` when the profile needs static shapes.
    """
    seq_len = seq_len or profile.seq_lens[0]
    fixed = onnx.ModelProto()
    fixed.CopyFrom(_load(model))
    dynamic = fix_input_shapes(fixed, seq_len)
    folded_model, folded = fold_constants(fixed)
    graph = folded_model.graph
    info = tensor_info(folded_model)
    consts = {i.name for i in graph.initializer}
    supported = None if profile.supported_ops is None else set(profile.supported_ops)

    running = list(graph.node)
    fallback = [n for n in running if supported is not None and op_key(n) not in supported]
    fallback_ids = {id(n) for n in fallback}
    flops = {id(n): node_flops(n, info) for n in running}
    total = sum(f or 0 for f in flops.values())
    fallback_flops = sum(flops[id(n)] or 0 for n in fallback)
    violations = _quantization_violations(graph, profile, info, consts,
                                          [n for n in running if id(n) not in fallback_ids])
    unsupported = sorted({op_key(n) for n in fallback})
    dynamic_inputs = dynamic if profile.static_shapes else []
    return {
        "profile": profile.name,
        "seq_len": seq_len,
        "unsupported_ops": unsupported,
        "fallback_nodes": [n.name or op_key(n) for n in fallback],
        "fallback_nodes_share": len(fallback) / len(running) if running else 0.0,
        "fallback_flops_share": fallback_flops / total if total else 0.0,
        "total_flops": total,
        "fallback_flops": fallback_flops,
        "nodes": len(running),
        "folded_nodes": folded,
        "nodes_without_flops": sum(f is None for f in flops.values()),
        "dynamic_inputs": dynamic_inputs,
        "quantization_violations": violations,
        "ok": not unsupported and not dynamic_inputs and not violations,
    }
