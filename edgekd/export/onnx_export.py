"""The shipped ONNX model: torch's export (models/onnx_graph.py), then int8 weights folded, int8 embedding rows
gathered and Gemm biases quantized (qdq.py), checked and saved.

No offline fusion: onnxruntime's transformer optimizer, or symbolic shapes recorded in the file so that onnxruntime
fuses at load, turn each residual Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel in
onnxruntime 1.32 is the slower of the two — measured on the flagship's 2-layer INT8 model (seq 128, 1 thread, one
run of rotated rounds): 3.06 against 2.11 ms, SkipLayerNormalization alone a quarter of the time; FP32 6.01
against 5.08 ms. Re-measure before adding such a pass.

The host export keeps transformers' own attention mask (Where(keep, 0, min) and its shape ops) rather than the device
path's finite additive 4D mask (attention_mask.py): the additive mask removes 65 of 450 nodes of the quick
benchmark's 3-layer INT8 model with identical outputs, but runs no faster — INT8 1.04x and 0.96x, FP32 1.00x in two
runs of 7 alternating fresh-process rounds (seq 128, 1 thread; 2026-12-03).
"""
from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from ..models.onnx_graph import LogitsOnly, torch_to_onnx
from ..quantize.fakequant import eight_bit_activations
from .qdq import count_ops, fold_weight_quantization, gather_quantized_rows, quantize_gemm_bias


def export_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int,
                static_shapes: bool = False) -> dict:
    """Export, fold quantized weights into int8, check, save. Returns graph facts for the manifest."""
    names = list(inputs)
    tmp = path.with_suffix(".raw.onnx")
    with eight_bit_activations(model) as sixteen_bit:
        graph = torch_to_onnx(LogitsOnly(model.eval(), names), inputs, tmp, opset, static_shapes)
    folded = fold_weight_quantization(graph)
    tables = gather_quantized_rows(graph)
    quantize_gemm_bias(graph)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    tmp.unlink()
    ops = count_ops(graph)
    return {"file": path.name, "opset": opset, "inputs": names, "static_shapes": static_shapes,
            "quantized_weights": folded, "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
            "int8_tables": len(tables), "ops": ops, "size_mb": path.stat().st_size / 1e6,
            **({"activations": f"{sixteen_bit} layers trained at 16-bit activation steps (qat.activation_dtype "
                               "uint16) exported at 8-bit steps over the same ranges"} if sixteen_bit else {})}
