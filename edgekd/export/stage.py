"""The `export` stage: ONNX (QDQ when the model was QAT'd), validated against PyTorch.

Writes model.onnx (what ships) and, for a quantized model, model-fp32.onnx: the same network with
quantization switched off, so profiling can show what INT8 gained on the same architecture.
The export fails — it does not warn — when onnxruntime and PyTorch disagree.
"""
from __future__ import annotations

from pathlib import Path

from ..configs import ExportConfig
from ..context import Context, copy_preprocessing
from ..errors import ExportValidationError
from ..models.spec import load_model_from_artifact
from ..progress import log
from ..quantize.fakequant import set_mode
from .onnx_export import example_inputs, export_onnx
from .validate import validate_export


def run_export(cfg: ExportConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    from ..profile.profiles import load_profile

    profile = load_profile(ctx.recipe.profiles[0]) if ctx.recipe.profiles else None
    static = cfg.static_shapes if cfg.static_shapes is not None else bool(profile and profile.static_shapes)
    seq_len = cfg.seq_len or (max(profile.seq_lens) if profile and static else 16)
    model = load_model_from_artifact(parent)
    quantized = bool(parent.spec.get("quant"))
    inputs = example_inputs(ctx.task, ctx.data.preprocess, seq_len)
    facts = export_onnx(model, inputs, out / "model.onnx", cfg.opset, static)
    log(f"export: model.onnx {facts['size_mb']:.2f} MB, {facts['qdq_nodes']} QDQ nodes, "
        f"{facts['quantized_weights']} int8 weights")
    extra = {"onnx": facts}
    val_data = ctx.encoded("dev", cfg.validation_examples)
    validation = validate_export(model, out / "model.onnx", val_data, cfg.min_agreement, list(inputs))
    if quantized:
        set_mode(model, "off")
        extra["onnx_fp32"] = export_onnx(model, inputs, out / "model-fp32.onnx", cfg.opset, static)
        set_mode(model, "frozen")
    copy_preprocessing(parent.path, out)  # also when called outside the engine (edgekd export)
    if validation["failures"]:
        kinds = ", ".join(f["type"] for f in validation["failures"])
        raise ExportValidationError(
            f"export: the ONNX model disagrees with PyTorch on {validation['examples']} dev examples ({kinds}: "
            f"{validation['failures']}). Nothing was written. Try another opset (export.opset) or report a bug.",
            validation["failures"],
        )
    log(f"export: onnxruntime vs PyTorch argmax agreement {validation['argmax_agreement']:.2%}, "
        f"max |Δlogit| {validation['max_abs_logit_diff']:.3g}")
    metrics = {"validation": validation, "size_mb": facts["size_mb"], "quantized": quantized}
    spec = {**parent.spec, "exported_from": parent.id}
    return {"metrics": metrics, "spec": spec, "extra": extra}
