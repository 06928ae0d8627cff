"""The shipped ONNX model: torch's export (models/onnx_graph.py), then int8 weights folded, int8 embedding rows
gathered and Gemm biases quantized (qdq.py), checked and saved."""
from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from ..models.onnx_graph import LogitsOnly, torch_to_onnx
from .qdq import count_ops, fold_weight_quantization, gather_quantized_rows, quantize_gemm_bias


def export_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int,
                static_shapes: bool = False) -> dict:
    """Export, fold quantized weights into int8, check, save. Returns graph facts for the manifest."""
    names = list(inputs)
    tmp = path.with_suffix(".raw.onnx")
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
            "int8_tables": len(tables), "ops": ops, "size_mb": path.stat().st_size / 1e6}
