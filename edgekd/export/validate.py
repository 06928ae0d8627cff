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
from ..distill.trainer import predict_logits
from .runtime import onnx_logits, session


def validate_export(model: torch.nn.Module, onnx_path: Path, data: Encoded, min_agreement: float,
                    expected_inputs: list[str]) -> dict:
    failures: list[dict] = []
    sess = session(onnx_path)
    got_inputs = [i.name for i in sess.get_inputs()]
    if got_inputs != expected_inputs:
        failures.append({"type": "input_names", "expected": expected_inputs, "got": got_inputs})
    static = _static_shapes(sess)
    if static is not None:
        data = _fit_to_static(data, static)
    ref = predict_logits(model, data, desc="validate: pytorch")
    out = (onnx_logits(onnx_path, data, desc="validate: onnxruntime") if static is None
           else _static_onnx_logits(sess, data, static))
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


def _static_shapes(sess) -> dict[str, list[int]] | None:
    """{input: shape} when every input dimension is fixed, else None."""
    shapes = {i.name: list(i.shape) for i in sess.get_inputs()}
    if all(isinstance(d, int) and d > 0 for shape in shapes.values() for d in shape):
        return shapes
    return None


def _fit_to_static(data: Encoded, static: dict[str, list[int]]) -> Encoded:
    if data.ids is None or "input_ids" not in static:
        return data
    seq_len = static["input_ids"][1]
    ids = [x if len(x) <= seq_len else x[: seq_len - 1] + [x[-1]] for x in data.ids]  # as encode(): keep [SEP]
    return Encoded(data.labels, ids=ids, pad_id=data.pad_id, truncated=data.truncated)


def _static_onnx_logits(sess, data: Encoded, static: dict[str, list[int]]) -> np.ndarray:
    """Logits of a static-shape model, one example per run (batch 1), texts padded to its length."""
    from ..profile.latency import image_feeds, text_feeds
    from ..progress import progress

    names = list(static)
    if data.ids is not None:
        feeds = text_feeds(data.ids, names, static["input_ids"][1], data.pad_id)
    else:
        feeds = image_feeds(data.images, names[0])
    rows = []
    with progress(len(feeds), "validate: onnxruntime (static shapes)") as advance:
        for f in feeds:
            rows.append(sess.run(None, f)[0])
            advance()
    return np.concatenate(rows).astype(np.float32)
