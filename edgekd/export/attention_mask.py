"""The attention mask of a full-INT8 device export, rebuilt so that it survives quantization.

Why the export does not use the model's own mask construction
--------------------------------------------------------------
transformers 5 builds BERT's additive attention mask from the 0/1 `attention_mask` input as
`Where(keep, 0, finfo(float32).min)`. The exported operators are all on the device's list, but
the mask is not quantizable: its range is [-3.4e38, 0], so its uint8 scale is 1.3e36, and the
attention-score Add that consumes it inherits that range under MinMax calibration (measured:
scale 1.33e36 on a tiny BERT) — every real score then rounds to the same level and attention
becomes uniform over the unmasked tokens. Its float constants also reach the device as float
inputs that no DequantizeLinear produces (a full-scope violation).

So for text models the export wrapper builds the additive mask itself, in float arithmetic the
quantizer handles like any activation: `mask4d = (attention_mask - 1) * M`, i.e. 0 for kept and
-M for padded keys, passed as a 4D mask (transformers adds a 4D mask to the scores as-is). In
float this equals HF's mask up to exp(-M) per padded key; the wrapper is checked against the
unwrapped model on padded inputs before export and not used if they disagree. M and the range of
each score+mask Add are then chosen from the measured score range [s_min, s_max] (per layer) so
that uint8 attention stays exact in the one way that matters:

- Softmax's uint8 output has step 1/255; a padded key contributes nothing visible when its
  total weight is below half a step, i.e. when it sits at least K = ln(2 * 255 * seq_len) below
  the row's maximum score (all seq_len keys counted, worst case).
- The Add output is quantized on [s_min - K, s_max] (override), not on the min-max of masked
  values, so real scores keep a step of (s_max - s_min + K) / 255.
- M = max_layers(s_max - s_min) + 2K, so every masked value s - M <= s_min - 2K saturates at the
  bottom of that range, which is K below any row's maximum (the maximum is >= s_min); the second K
  keeps the float model (model-fp32.onnx, and the calibration pass) equal to HF's mask: a padded
  key's float weight is at most exp(-2K) = 1 / (510 * seq_len)^2.
The mask tensor itself is exact in uint8 (0 -> level 255, -M -> level 0).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..models.hf import logits_of
from ..progress import log
from ..models.onnx_graph import LogitsOnly, torch_to_onnx
from ..onnx_wiring import consumers_of

# Placeholder for M in the first export; replaced by the measured value (see the module doc).
_MASK_PLACEHOLDER = 12345.0
_MASK_INIT = "edgekd_attention_mask_scale"
# Ops the additive mask may pass through between the scale Mul and the score Add.
_PASS_THROUGH = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity", "Cast"}


class AdditiveMaskLogits(LogitsOnly):
    """Export wrapper: the 0/1 attention_mask becomes a finite additive 4D mask (0 kept, -M padded)."""

    def __init__(self, model: nn.Module, input_names: list[str], mask_value: float):
        super().__init__(model, input_names)
        self.mask_value = float(mask_value)

    def forward(self, *args):
        batch = dict(zip(self.input_names, args))
        keep = batch["attention_mask"][:, None, None, :].to(torch.float32)
        batch["attention_mask"] = (keep - 1.0) * self.mask_value
        return logits_of(self.model, batch)


def export_float(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int,
                  calib_feeds: list[dict[str, np.ndarray]]) -> tuple[onnx.ModelProto, dict | None]:
    """Float export; with the finite additive mask when the model takes attention_mask and honours it.

    A model that is no transformers model (edgekd's text CNN and BiLSTM, which have no attention) uses attention_mask
    only to zero padded positions, whose 0/1 values quantize exactly: it is exported as it is, with nothing to warn
    about.
    """
    names = list(inputs)
    model.eval()
    if "attention_mask" in inputs and getattr(model, "config", None) is not None:
        wrapper = AdditiveMaskLogits(model, names, _MASK_PLACEHOLDER)
        diff = _mask_wrapper_error(model, wrapper, names, calib_feeds)
        if diff is not None and diff <= 1e-3:
            raw = torch_to_onnx(wrapper, inputs, path, opset, static_shapes=True)
            mask = _locate_mask(raw)
            if mask is not None:
                return raw, {"construction": "(attention_mask - 1) * M, 4D additive (export wrapper)",
                             "wrapper_max_abs_logit_diff": diff, **mask}
        why = ("rejects a 4D additive mask" if diff is None else
               f"gives other logits with a 4D additive mask (max |Δlogit| {diff:.3g})" if diff > 1e-3 else
               "does not add the 4D mask to its attention scores in the exported graph")
        log(f"[yellow]export: the model {why}; exporting its own mask construction, whose quantized range "
            "may flatten attention[/]")
    return torch_to_onnx(LogitsOnly(model, names), inputs, path, opset, static_shapes=True), None


def _mask_wrapper_error(model: nn.Module, wrapper: nn.Module, names: list[str],
                        feeds: list[dict[str, np.ndarray]]) -> float | None:
    """Max |logit difference| wrapper vs model on the padded calibration feeds with the most padding."""
    padded = sorted(feeds, key=lambda f: int(f["attention_mask"].sum()))[:8]
    worst = 0.0
    with torch.no_grad():
        for f in padded:
            args = [torch.from_numpy(f[n]) for n in names]
            try:
                ref = logits_of(model, dict(zip(names, args))).float()
                got = wrapper(*args).float()
            except Exception:  # noqa: BLE001 — a model that rejects a 4D mask: use its own mask
                return None
            if ref.shape != got.shape or not torch.isfinite(got).all():
                return None
            worst = max(worst, float((ref - got).abs().max()))
    return worst


def _const_value(name: str, graph: onnx.GraphProto) -> np.ndarray | None:
    for i in graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _locate_mask(raw: onnx.ModelProto) -> dict | None:
    """The Mul that scales the mask by the placeholder M, and the score Adds that consume its result."""
    g = raw.graph
    scale_muls = []
    for n in g.node:
        if n.op_type != "Mul":
            continue
        for k, i in enumerate(n.input):
            v = _const_value(i, g)
            if v is not None and v.size == 1 and float(v.reshape(-1)[0]) == _MASK_PLACEHOLDER:
                scale_muls.append((n, k))
    if len(scale_muls) != 1:
        return None
    mul, k = scale_muls[0]
    consumers = consumers_of(g)
    adds, frontier = [], [mul.output[0]]
    while frontier:
        t = frontier.pop()
        for c in consumers.get(t, []):
            if c.op_type == "Add":
                adds.append({"add": c.name, "output": c.output[0], "scores": next(i for i in c.input if i != t)})
            elif c.op_type in _PASS_THROUGH:
                frontier.append(c.output[0])
    if not adds:
        return None
    placeholder = mul.input[k]
    mul.input[k] = _MASK_INIT  # its own initializer, set once M is known (fit_mask)
    g.initializer.append(numpy_helper.from_array(np.array(_MASK_PLACEHOLDER, dtype=np.float32), _MASK_INIT))
    if not any(placeholder in n.input for n in g.node):  # drop the now unused placeholder constant
        for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] == placeholder]:
            g.node.remove(n)
        for i in [i for i in g.initializer if i.name == placeholder]:
            g.initializer.remove(i)
    return {"mask_tensor": mul.output[0], "score_adds": adds}


def fit_mask(raw: onnx.ModelProto, mask: dict, feeds: list[dict[str, np.ndarray]], seq_len: int) -> dict:
    """Measure each layer's score range on the calibration feeds, then set M (see the module doc)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(raw)
    scores = [a["scores"] for a in mask["score_adds"]]
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(s, onnx.TensorProto.FLOAT, None) for s in scores)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo = np.full(len(scores), np.inf)
    hi = np.full(len(scores), -np.inf)
    for f in feeds:
        for j, s in enumerate(sess.run(scores, f)):
            lo[j], hi[j] = min(lo[j], float(s.min())), max(hi[j], float(s.max()))
    margin = math.log(2 * 255 * seq_len)
    m = math.ceil(float((hi - lo).max()) + 2 * margin)
    for i in raw.graph.initializer:
        if i.name == _MASK_INIT:
            i.CopyFrom(numpy_helper.from_array(np.array(m, dtype=np.float32), _MASK_INIT))
    for a, l, h in zip(mask["score_adds"], lo, hi):
        a["score_range"] = [float(l), float(h)]
        a["output_range"] = [float(l) - margin, float(h)]
    return {"mask_value": float(m), "margin": margin}
