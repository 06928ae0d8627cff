"""The `export` stage: ONNX (QDQ when the model was QAT'd), validated against PyTorch.

Writes model.onnx (what ships) and, for a quantized model, model-fp32.onnx: the same network with
quantization switched off, so profiling can show what INT8 gained on the same architecture; and,
with export.teacher, teacher.onnx: the run's teacher in FP32, the reference the profile stage
measures the shipped model against.
The export fails — it does not warn — when onnxruntime and PyTorch disagree.
"""
from __future__ import annotations

from pathlib import Path

from ..configs import ExportConfig
from ..train.context import Context
from ..errors import ExportValidationError
from ..models.spec import load_model_from_artifact
from ..progress import log
from ..quantize.fakequant import fake_quant_off
from .device import export_for_device
from .onnx_export import example_inputs, export_onnx
from .validate import validate_export

# Examples (from the train split) that calibrate the activation ranges of a full-INT8 device export.
CALIBRATION_EXAMPLES = 64


def device_builds(cfg: ExportConfig, profiles: list[str]) -> list[str]:
    """Profiles after the first that get a model of their own (export.devices; default: every integer
    NPU, whose full-INT8 static-shape scheme the first profile's model does not follow)."""
    from ..devices.profiles import load_profile

    first = profiles[0] if profiles else None
    if cfg.devices is not None:
        return [p for p in cfg.devices if p != first]
    return [p for p in profiles[1:] if p != first and load_profile(p).quantization.scope == "full"]


def run_export(cfg: ExportConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    """model.onnx for the first profile; devices/<profile>/model.onnx for each device build."""
    from ..devices.profiles import load_profile

    profiles = ctx.recipe.profiles
    model = load_model_from_artifact(parent)
    quantized = bool(parent.spec.get("quant"))
    val_data = ctx.encoded("dev", cfg.validation_examples)
    primary = load_profile(profiles[0]) if profiles else None
    # the float twin: of a QAT model on the CPU path; a full-INT8 device export always keeps the float model it quantized
    twin = quantized or (primary is not None and primary.quantization.scope == "full")
    facts, extra = _build(model, cfg, primary, parent, ctx, out, val_data, cfg.min_agreement, float_twin=twin)
    validation = extra.pop("validation")
    devices = {}
    for name in device_builds(cfg, profiles):
        folder = out / "devices" / name
        folder.mkdir(parents=True)
        dev_facts, dev_extra = _build(model, cfg, load_profile(name), parent, ctx, folder, val_data,
                                      cfg.device_min_agreement, float_twin=False)
        devices[name] = {"file": f"devices/{name}/model.onnx", "onnx": dev_facts, "compat": dev_extra.get("compat"),
                         "validation": dev_extra["validation"], "size_mb": dev_facts["size_mb"]}
    if devices:
        extra["devices"] = devices
    metrics = {"validation": validation, "size_mb": facts["size_mb"], "quantized": quantized,
               **({"devices": {n: {"size_mb": d["size_mb"], "argmax_agreement": d["validation"]["argmax_agreement"],
                                   "fallback_nodes_share": (d["compat"] or {}).get("fallback_nodes_share")}
                               for n, d in devices.items()}} if devices else {})}
    if cfg.teacher and ctx.teacher is not None and ctx.teacher.id != parent.id:
        # on the CPU: the teacher may sit on the training GPU since it predicted the teacher outputs
        teacher = export_onnx(ctx.teacher_model().cpu(), example_inputs(ctx.task, ctx.data.preprocess), out / "teacher.onnx",
                              cfg.opset)
        extra["teacher_onnx"] = {**teacher, "artifact": ctx.teacher.id, "params": ctx.teacher.spec["summary"]["params"]}
        log(f"export: teacher.onnx {teacher['size_mb']:.2f} MB (FP32 reference)")
    spec = {**parent.spec, "exported_from": parent.id}
    return {"metrics": metrics, "spec": spec, "extra": extra}


def _build(model, cfg: ExportConfig, profile, parent, ctx: Context, out: Path, val_data,
           min_agreement: float, float_twin: bool) -> tuple[dict, dict]:
    """Export `model` to out/model.onnx as `profile` needs it and validate it against PyTorch.

    float_twin: also write out/model-fp32.onnx, the same network with quantization off, at the same
    shapes (what profiling compares INT8 with); a device build's twin is not kept (the first
    profile's serves the run). Returns (graph facts, extra manifest entries incl. validation). Raises ExportValidationError when
    onnxruntime and PyTorch disagree on more than 1 - min_agreement of the dev examples.
    """
    static = cfg.static_shapes if cfg.static_shapes is not None else bool(profile and profile.static_shapes)
    seq_len = cfg.seq_len or (max(profile.seq_lens) if profile and static else 16)
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
        if not float_twin:  # export_for_device always writes the float model it quantized
            (out / "model-fp32.onnx").unlink()
            del extra["onnx_fp32"]
        log(f"export: {profile.name} model.onnx {facts['size_mb']:.2f} MB: static [1, {seq_len}], full INT8 QDQ "
            f"({facts['qdq_nodes']} QDQ nodes, {facts['quantized_weights']} {profile.quantization.weight_dtype} "
            f"{profile.quantization.weight_granularity} weights), {extra['compat']['fallback_nodes_share']:.0%} "
            "operator fallback")
    else:
        facts = export_onnx(model, inputs, out / "model.onnx", cfg.opset, static)
        log(f"export: model.onnx {facts['size_mb']:.2f} MB, {facts['qdq_nodes']} QDQ nodes, "
            f"{facts['quantized_weights']} int8 weights")
        extra = {"onnx": facts}
        if float_twin:
            with fake_quant_off(model):
                extra["onnx_fp32"] = export_onnx(model, inputs, out / "model-fp32.onnx", cfg.opset, static)
    validation = validate_export(model, out / "model.onnx", val_data, min_agreement, list(inputs))
    if validation["failures"]:
        kinds = ", ".join(f["type"] for f in validation["failures"])
        field = "export.device_min_agreement" if out.parent.name == "devices" else "export.min_agreement"
        hint = ("Try another opset (export.opset) or report a bug." if not device else
                f"The model is quantized in full (every activation uint8, per-tensor weights) for {profile.name}, "
                f"which the QAT model was not trained for; if this loss is acceptable lower {field} "
                "(edgekd export --min-agreement), otherwise report it.")
        raise ExportValidationError(
            f"export{' for ' + profile.name if profile else ''}: the ONNX model disagrees with PyTorch on "
            f"{validation['examples']} dev examples ({kinds}: {validation['failures']}). Nothing was written. {hint}",
            validation["failures"],
        )
    log(f"export{' for ' + profile.name if device else ''}: onnxruntime vs PyTorch argmax agreement "
        f"{validation['argmax_agreement']:.2%}, max |Δlogit| {validation['max_abs_logit_diff']:.3g}")
    extra["validation"] = validation
    return facts, extra


def _calibration_feeds(ctx: Context, names: list[str], seq_len: int) -> list[dict]:
    """Batch-1 feeds from the train split, shaped as the static export (texts padded/truncated to seq_len)."""
    from ..devices.feeds import image_feeds, text_feeds

    enc = ctx.encoded("train", CALIBRATION_EXAMPLES)
    if enc.images is not None:
        return image_feeds(enc.images, names[0])
    return text_feeds(enc.ids, names, seq_len, enc.pad_id)
