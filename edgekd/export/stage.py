"""The `export` stage: ONNX (QDQ when the model was QAT'd), validated against PyTorch.

Writes model.onnx (what ships) and, for a quantized model, model-fp32.onnx: the same network with
quantization switched off, so profiling can show what INT8 gained on the same architecture.
The export fails — it does not warn — when onnxruntime and PyTorch disagree.
"""
from __future__ import annotations

from pathlib import Path

from ..configs import ExportConfig
from ..context import Context
from ..errors import ExportValidationError
from ..models.spec import load_model_from_artifact
from ..progress import log
from ..quantize.fakequant import fake_quant_off
from .device import export_for_device
from .onnx_export import example_inputs, export_onnx
from .validate import validate_export

# Examples (from the train split) that calibrate the activation ranges of a full-INT8 device export.
CALIBRATION_EXAMPLES = 64


def run_export(cfg: ExportConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    from ..profile.profiles import load_profile

    profile = load_profile(ctx.recipe.profiles[0]) if ctx.recipe.profiles else None
    static = cfg.static_shapes if cfg.static_shapes is not None else bool(profile and profile.static_shapes)
    seq_len = cfg.seq_len or (max(profile.seq_lens) if profile and static else 16)
    model = load_model_from_artifact(parent)
    quantized = bool(parent.spec.get("quant"))
    device = profile is not None and profile.quantization.scope == "full"
    if device and not cfg.seq_len:  # an integer NPU: static shapes whatever export.static_shapes says, at the
        # profile's longest sequence length that the model's position table holds
        limit = parent.spec.get("hf_config", {}).get("max_position_embeddings")
        fitting = [s for s in profile.seq_lens if limit is None or s <= limit]
        seq_len = max(fitting) if fitting else limit
    inputs = example_inputs(ctx.task, ctx.data.preprocess, seq_len)
    if device:
        facts = export_for_device(model, inputs, out, profile, _calibration_feeds(ctx, list(inputs), seq_len),
                                  cfg.opset)
        extra = {"onnx": facts, "compat": facts.pop("compat"), "onnx_fp32": facts.pop("fp32")}
        log(f"export: model.onnx {facts['size_mb']:.2f} MB for {profile.name}: static [1, {seq_len}], full INT8 QDQ "
            f"({facts['qdq_nodes']} QDQ nodes, {facts['quantized_weights']} {profile.quantization.weight_dtype} "
            f"{profile.quantization.weight_granularity} weights), {extra['compat']['fallback_nodes_share']:.0%} "
            "operator fallback")
    else:
        facts = export_onnx(model, inputs, out / "model.onnx", cfg.opset, static)
        log(f"export: model.onnx {facts['size_mb']:.2f} MB, {facts['qdq_nodes']} QDQ nodes, "
            f"{facts['quantized_weights']} int8 weights")
        extra = {"onnx": facts}
    val_data = ctx.encoded("dev", cfg.validation_examples)
    validation = validate_export(model, out / "model.onnx", val_data, cfg.min_agreement, list(inputs))
    if quantized and not device:  # the device path wrote its float twin (model-fp32.onnx) already
        with fake_quant_off(model):
            extra["onnx_fp32"] = export_onnx(model, inputs, out / "model-fp32.onnx", cfg.opset, static)
    if validation["failures"]:
        kinds = ", ".join(f["type"] for f in validation["failures"])
        hint = ("Try another opset (export.opset) or report a bug." if not device else
                f"The model is quantized in full (every activation uint8, per-tensor weights) for {profile.name}, "
                "which the QAT model was not trained for; if this loss is acceptable lower export.min_agreement (edgekd export --min-agreement), "
                "otherwise report it.")
        raise ExportValidationError(
            f"export: the ONNX model disagrees with PyTorch on {validation['examples']} dev examples ({kinds}: "
            f"{validation['failures']}). Nothing was written. {hint}",
            validation["failures"],
        )
    log(f"export: onnxruntime vs PyTorch argmax agreement {validation['argmax_agreement']:.2%}, "
        f"max |Δlogit| {validation['max_abs_logit_diff']:.3g}")
    metrics = {"validation": validation, "size_mb": facts["size_mb"], "quantized": quantized}
    spec = {**parent.spec, "exported_from": parent.id}
    return {"metrics": metrics, "spec": spec, "extra": extra}


def _calibration_feeds(ctx: Context, names: list[str], seq_len: int) -> list[dict]:
    """Batch-1 feeds from the train split, shaped as the static export (texts padded/truncated to seq_len)."""
    from ..profile.latency import image_feeds, text_feeds

    enc = ctx.encoded("train", CALIBRATION_EXAMPLES)
    if enc.images is not None:
        return image_feeds(enc.images, names[0])
    return text_feeds(enc.ids, names, seq_len, enc.pad_id)
