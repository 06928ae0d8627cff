"""Export validation: onnxruntime against PyTorch on real inputs, as a list of typed failures.

A static-shape export (every input dimension fixed, as NPUs need) is validated the way the device
runs it: one example at a time, texts padded (or truncated, keeping the final [SEP]) to the
model's sequence length; PyTorch sees the same truncated texts (its padding is masked out).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.batching import Encoded
from ..train.predict import predict_logits
from ..devices.runtime import fit_to_static, onnx_logits, session, static_shapes


def validate_export(model: torch.nn.Module, onnx_path: Path, data: Encoded, min_agreement: float,
                    expected_inputs: list[str]) -> dict:
    failures: list[dict] = []
    sess = session(onnx_path)
    got_inputs = [i.name for i in sess.get_inputs()]
    if got_inputs != expected_inputs:
        failures.append({"type": "input_names", "expected": expected_inputs, "got": got_inputs})
    static = static_shapes(sess)
    if static is not None:
        data = fit_to_static(data, static)  # PyTorch sees the texts the device will see
    ref = predict_logits(model, data, desc="validate: pytorch")
    out = onnx_logits(onnx_path, data, desc="validate: onnxruntime")
    if out.shape != ref.shape:
        failures.append({"type": "output_shape", "expected": list(ref.shape), "got": list(out.shape)})
        return {"failures": failures, "examples": len(data)}
    agreement = float((out.argmax(-1) == ref.argmax(-1)).mean())
    max_diff = float(np.abs(out - ref).max())
    if not np.isfinite(out).all():
        failures.append({"type": "non_finite", "detail": "onnxruntime produced NaN/Inf logits"})
    if agreement < min_agreement:
        failures.append({"type": "argmax_agreement", "expected_min": min_agreement, "got": agreement})
    return {"examples": len(data), **({"static_shapes": static} if static is not None else {}), "argmax_agreement": agreement, "max_abs_logit_diff": max_diff,
            "mean_abs_logit_diff": float(np.abs(out - ref).mean()), "failures": failures}
