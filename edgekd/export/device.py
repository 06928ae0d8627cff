"""Export for a device profile: what an integer NPU needs, or the CPU path for CPU profiles.

For a profile with quantization scope `full` (an integer-only NPU such as the Hexagon HTP behind
onnxruntime's QNN execution provider), the model must reach the device with static shapes and
*every* activation quantized — attention MatMuls, Softmax, LayerNorm and GELU included — in the
device's scheme (uint8 activations, per-tensor weights). edgekd's own QAT export quantizes only
the inputs of Linear/Conv layers (per-channel int8 weights, the CPU scheme), so for such a device
we follow onnxruntime's QNN tooling instead:

1. export the network in float (fake quantization switched off), inputs fixed to [1, seq_len];
2. `qnn_preprocess_model` (fuses the Erf form of GELU into Gelu, ReduceMean chains into
   LayerNormalization, folds the static shape arithmetic);
3. `quantize_static` with `get_qnn_qdq_config` in the profile's scheme, calibrated (MinMax) on
   real examples the caller passes; where the QAT model learned the range of a layer's input,
   that range is used for that tensor instead of the calibrated one (TensorQuantOverrides);
4. `check_compatibility` with the profile: an unsupported operator or a dynamic input is refused
   with the list of offending operators — edgekd does not ship a model that silently falls back.

The attention mask is rebuilt so that it survives quantization: see attention_mask.py.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import EdgekdError
from ..devices.profiles import DeviceProfile
from ..devices.runtime import quiet_ort
from ..onnx_wiring import consumers_of
from ..progress import log
from ..quantize.fakequant import OUTPUT_QUANT, QuantLinear, fake_quant_off
from .attention_mask import export_float, fit_mask
from .onnx_export import export_onnx
from .qdq import count_ops


def export_for_device(model: nn.Module, inputs: dict[str, torch.Tensor], out_dir: Path, profile: DeviceProfile,
                      calib_feeds: list[dict[str, np.ndarray]], opset: int) -> dict:
    """Write `out_dir/model.onnx` as `profile` needs it; returns graph facts (and, for NPUs, compatibility).

    Scope `full`: static float export -> QNN preprocessing -> full QDQ in the profile's scheme,
    calibrated on `calib_feeds` (batch-1 feeds shaped like `inputs`); also writes the float model it
    quantized as model-fp32.onnx. Raises EdgekdError when the result would not run wholly on the device.
    Other scopes: edgekd's QAT export (`export_onnx`), static or dynamic as the profile says.
    """
    out_dir = Path(out_dir)
    if profile.quantization.scope != "full":
        return export_onnx(model, inputs, out_dir / "model.onnx", opset, profile.static_shapes)
    if not calib_feeds:
        raise EdgekdError(f"export for {profile.name}: no calibration examples; full INT8 quantization needs real "
                          "inputs to calibrate activation ranges.")
    bad = {n: list(t.shape) for n, t in inputs.items() if t.shape[0] != 1}
    if bad:
        raise EdgekdError(f"export for {profile.name}: static-shape inputs must have batch 1; got {bad}.")
    seq_len = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else None
    with fake_quant_off(model) as qat_layers, tempfile.TemporaryDirectory(prefix="edgekd-npu-") as tmp:
        tmp = Path(tmp)
        raw, mask = export_float(model, inputs, tmp / "raw.onnx", opset, calib_feeds)
        qat_tensors = {**_qat_input_tensors(raw, qat_layers), **_qat_output_tensors(raw, model)}
        if mask is not None:
            mask.update(fit_mask(raw, mask, calib_feeds, seq_len))
        onnx.save(raw, str(tmp / "raw.onnx"))
        from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

        with quiet_ort():
            pre = tmp / "pre.onnx" if qnn_preprocess_model(tmp / "raw.onnx", tmp / "pre.onnx",
                                                           fuse_layernorm=True) else tmp / "raw.onnx"
        float_model = onnx.load(str(pre))
        present = {v for n in float_model.graph.node for v in (*n.input, *n.output)}
        overrides, ranges_fact = _overrides(qat_tensors, sorted(qat_layers), mask, present)
        quant = _quantize(pre, tmp / "model.onnx", profile, calib_feeds, overrides)
        graph = onnx.load(str(tmp / "model.onnx"))
        from ..devices.compat import check_compatibility

        compat = check_compatibility(tmp / "model.onnx", profile, seq_len)
        _refuse_if_unsupported(graph, compat, profile)  # before anything is written to out_dir
        onnx.save(graph, str(out_dir / "model.onnx"))
        # The float twin is the raw export (mask already rewritten), not the preprocessed model: onnxruntime
        # 1.32's MatMulAddFusion fails to load the already-optimized one at its default level (measured:
        # 'AddInitializedOrtValue Attempt to replace the existing tensor'); it optimizes the raw one itself.
        onnx.save(raw, str(out_dir / "model-fp32.onnx"))
    ops = count_ops(graph)
    inits = {i.name: i for i in graph.graph.initializer}
    weights = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    facts = {
        "file": "model.onnx", "opset": opset, "inputs": list(inputs), "static_shapes": True, "seq_len": seq_len,
        "input_shapes": {n: list(t.shape) for n, t in inputs.items()},
        "quantized_weights": len(weights), "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
        "ops": ops, "size_mb": (out_dir / "model.onnx").stat().st_size / 1e6,
        "quantization": {**quant, "calibration_examples": len(calib_feeds), "ranges": ranges_fact,
                         **({"attention_mask": mask} if mask is not None else {})},
        "fp32": {"file": "model-fp32.onnx", "opset": opset, "inputs": list(inputs), "static_shapes": True,
                 "ops": count_ops(raw), "size_mb": (out_dir / "model-fp32.onnx").stat().st_size / 1e6},
    }
    facts["compat"] = compat
    if compat["quantization_violations"]:
        kinds = sorted({v["kind"] for v in compat["quantization_violations"]})
        log(f"[yellow]export: {len(compat['quantization_violations'])} quantization violation(s) for "
            f"{profile.name} ({', '.join(kinds)}); see the manifest's compat entry[/]")
    return facts


# ---------------------------------------------------------------------------------------------- quantize
def _qat_input_tensors(raw: onnx.ModelProto, layers: dict[str, nn.Module]) -> dict[str, dict]:
    """ONNX input tensor of each QAT layer with a learned range -> {rmin, rmax, layers}.

    The TorchScript exporter names a layer's node by its module scope under the wrapper
    ('/model/bert/encoder/layer.0/attention/self/query/MatMul'); its first input is the
    activation the QAT layer observed. Layers sharing an input (q/k/v) share one range (their union).
    """
    linear = {_module_of(n): n for n in raw.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.name.startswith("/")}
    out: dict[str, dict] = {}
    for name, layer in layers.items():
        node = linear.get(f"model.{name}")
        lo, hi = float(layer.act_min), float(layer.act_max)
        if node is None or not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # as the QAT fake quant: zero stays exact
        t = out.setdefault(node.input[0], {"rmin": lo, "rmax": hi, "layers": []})
        t["rmin"], t["rmax"] = min(t["rmin"], lo), max(t["rmax"], hi)
        t["layers"].append(name)
    return out


def _module_of(node: onnx.NodeProto) -> str:
    """The module a node of the TorchScript export belongs to: '/model/bert/.../query/MatMul' ->
    'model.bert....query' (the exporter names nodes by module scope)."""
    return node.name.rsplit("/", 1)[0].replace("/", ".").lstrip(".")


def _qat_output_tensors(raw: onnx.ModelProto, model: nn.Module) -> dict[str, dict]:
    """ONNX output tensor of each Linear whose output QAT quantized (attention's Q/K/V) -> {rmin, rmax, layers}.

    The Linear's output is its bias Add ('/model/.../query/Add'), or its MatMul when it has no bias."""

    scoped: dict[str, onnx.NodeProto] = {}
    for n in raw.graph.node:
        if n.op_type in ("MatMul", "Add") and n.name.startswith("/"):
            if n.op_type == "Add" or _module_of(n) not in scoped:
                scoped[_module_of(n)] = n
    out: dict[str, dict] = {}
    for name, m in model.named_modules():
        q = m._modules.get(OUTPUT_QUANT) if isinstance(m, QuantLinear) else None
        node = scoped.get(f"model.{name}")
        if q is None or node is None or not (math.isfinite(float(q.act_min)) and math.isfinite(float(q.act_max))):
            continue
        out[node.output[0]] = {"rmin": min(float(q.act_min), 0.0), "rmax": max(float(q.act_max), 0.0),
                               "layers": [f"{name}.{OUTPUT_QUANT}"]}
    return out


def _overrides(qat: dict[str, dict], all_layers: list[str], mask: dict | None,
               present: set[str]) -> tuple[dict, str]:
    overrides: dict[str, list[dict]] = {}
    mapped = outputs = 0
    for tensor, r in qat.items():
        if tensor in present:
            overrides[tensor] = [{"rmin": np.array(r["rmin"], np.float32), "rmax": np.array(r["rmax"], np.float32)}]
            is_output = r["layers"][0].endswith(f".{OUTPUT_QUANT}")
            outputs += len(r["layers"]) if is_output else 0
            mapped += 0 if is_output else len(r["layers"])
    if mask is not None:
        for a in mask["score_adds"]:
            if a["output"] in present:
                lo, hi = a["output_range"]
                overrides[a["output"]] = [{"rmin": np.array(lo, np.float32), "rmax": np.array(hi, np.float32)}]
                a["range_applied"] = True
            else:  # renamed by preprocessing: MinMax calibration (coarser scores, still finite)
                a["range_applied"] = False
    if not all_layers:
        fact = "calibrated (MinMax; the model has no QAT ranges)"
    elif mapped == 0:
        fact = "calibrated (QAT ranges not mapped)"
    else:
        fact = (f"QAT ranges for the inputs of {mapped} of {len(all_layers)} quantized layers"
                + (f" and for {outputs} attention Q/K/V outputs" if outputs else "")
                + "; every other activation calibrated (MinMax)")
    return overrides, fact


# Ops onnxruntime's QDQ quantizer gives the quantization parameters of their input (data movement).
_SAME_TYPE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Expand", "Tile"}


def _quantize(src: Path, dst: Path, profile: DeviceProfile, feeds: list[dict[str, np.ndarray]],
              overrides: dict) -> dict:
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from ..devices.feeds import calibration_reader

    scheme = profile.quantization
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16}
    per_channel = scheme.weight_granularity == "per-channel"
    if scheme.activation_dtype == "uint16":
        # onnxruntime's QNN config quantizes a table read by Gather as an activation: 16-bit tables would double
        # the embeddings' bytes; they stay at the weight type (a convert follows where the graph needs 16 bits)
        graph = onnx.load(str(src), load_external_data=False).graph
        tables = {i.name for i in graph.initializer} & {n.input[0] for n in graph.node if n.op_type == "Gather"}
        overrides = {**overrides, **{t: [{**(overrides.get(t) or [{}])[0], "quant_type": qtype[scheme.weight_dtype]}]
                                     for t in tables}}
        # The rows a Gather reads keep the table's type; an op that only moves data (a text CNN's Transpose) would
        # carry that 8-bit type on into the 16-bit graph, so its input is converted to the activation type first.
        # (An Add, as in a transformer's embeddings, takes the 8-bit rows as they are.)
        consumers = consumers_of(graph)
        for n in graph.node:
            if n.op_type == "Gather" and n.input[0] in tables and \
                    {c.op_type for c in consumers.get(n.output[0], ())} & _SAME_TYPE_OPS:
                overrides[n.output[0]] = [{"quant_type": qtype[scheme.weight_dtype],
                                           "convert": {"quant_type": qtype[scheme.activation_dtype]}}]
    with quiet_ort():
        config = get_qnn_qdq_config(str(src), calibration_reader(feeds), activation_type=qtype[scheme.activation_dtype],
                                    weight_type=qtype[scheme.weight_dtype], per_channel=per_channel,
                                    init_overrides=overrides or None)
        quantize(str(src), str(dst), config)
    return {"tool": "onnxruntime get_qnn_qdq_config + quantize_static (QDQ, MinMax calibration)",
            "activation_dtype": scheme.activation_dtype, "weight_dtype": scheme.weight_dtype,
            "weight_granularity": scheme.weight_granularity, "scope": scheme.scope,
            "overridden_tensors": len(overrides)}


def _refuse_if_unsupported(graph: onnx.ModelProto, compat: dict, profile: DeviceProfile) -> None:
    if not compat["unsupported_ops"] and not compat["dynamic_inputs"]:
        return
    from ..devices.compat import op_key

    fallback = set(compat["fallback_nodes"])
    counts: dict[str, int] = {}
    for n in graph.graph.node:
        if n.name in fallback or (not n.name and op_key(n) in fallback):
            counts[op_key(n)] = counts.get(op_key(n), 0) + 1
    for op in compat["unsupported_ops"]:
        counts.setdefault(op, 0)
    parts = []
    if compat["unsupported_ops"]:
        listed = ", ".join(f"{op} ({counts[op]} node{'s' if counts[op] != 1 else ''})"
                           for op in compat["unsupported_ops"])
        parts.append(f"operators its execution provider ({profile.execution_provider}) has no kernel for: {listed} "
                     f"— {compat['fallback_nodes_share']:.1%} of the nodes and {compat['fallback_flops_share']:.1%} "
                     "of the FLOPs would fall back to the CPU")
    if compat["dynamic_inputs"]:
        parts.append(f"dynamic input shapes {compat['dynamic_inputs']} where the device needs static ones")
    raise EdgekdError(
        f"export for {profile.name}: the quantized model would not run wholly on the device — " + "; and ".join(parts)
        + ". Nothing was written. Use a model without these operators, or, if the device does support them, "
        f"add them to supported_ops in the profile {profile.name}.yaml."
    )
