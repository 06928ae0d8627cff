"""torch -> ONNX graph for edgekd models (HF classifiers and CNN students, float or fake-quantized).

Below the stages: the export stage builds shipped models on it (export/onnx_export.py adds the
int8 weight passes) and the prune stage times candidate widths with it (a latency budget).

We use torch's TorchScript-based exporter (`dynamo=False`): it translates fake-quant ops to
ONNX QuantizeLinear/DequantizeLinear pairs, which the dynamo exporter in torch 2.13 cannot
(measured: ConversionError on aten.fake_quantize_per_channel_affine).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from .hf import logits_of


class LogitsOnly(nn.Module):
    """Export wrapper: named tensor inputs in, logits out (no HF ModelOutput)."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *args):
        return logits_of(self.model, dict(zip(self.input_names, args)))


def example_inputs(task: str, preprocess: dict, seq_len: int = 16) -> dict[str, torch.Tensor]:
    if task == "image-classification":
        return {"pixel_values": torch.zeros(1, *preprocess["input_shape"])}
    ids = torch.full((1, seq_len), 5, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def torch_to_onnx(wrapper: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int,
                  static_shapes: bool = False) -> onnx.ModelProto:
    """The one call of torch's exporter: named inputs, `logits` output, dynamic batch/sequence unless static."""
    names = list(inputs)
    dynamic = None
    if not static_shapes:
        dynamic = {n: ({0: "batch", 1: "sequence"} if inputs[n].ndim == 2 else {0: "batch"}) for n in names}
        dynamic["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(wrapper.eval(), tuple(inputs[n] for n in names), str(path), dynamo=False,
                          opset_version=opset, input_names=names, output_names=["logits"], dynamic_axes=dynamic,
                          do_constant_folding=True)
    return onnx.load(str(path))
