"""Post-training quantization (PTQ) baselines: what onnxruntime's own tools make of the final model's FP32 export.

The profile stage measures them next to the shipped model, so that every run shows what QAT and edgekd's
export buy over quantizing the trained float model afterwards with the library everyone already has:

- ptq-dynamic: `quantize_dynamic` — int8 weights (per channel), activations quantized at run time
  (QOperator graph: DynamicQuantizeLinear + MatMulInteger / ConvInteger);
- ptq-static: `quantize_static` in QDQ format — uint8 activations with ranges calibrated (MinMax) on
  examples of the train split, int8 per-channel weights.

Both start from `quant_pre_process` (see _preprocess). They are written into the profile stage's own
folder, never into the export artifact, and are not shipped. A baseline onnxruntime fails to build is
returned as {"error": ...}: a missing baseline must not cost the run.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..data.batching import Encoded
from ..devices.feeds import calibration_reader, encoded_feeds, model_input_dims, model_input_names
from ..devices.runtime import dynamic_int8, quiet_ort

# What each baseline is, as the results and reports label it.
BASELINES = {"ptq-dynamic": "onnxruntime quantize_dynamic",
             "ptq-static": "onnxruntime quantize_static (QDQ, MinMax)"}
# Train examples (one feed each) that calibrate ptq-static's activation ranges. Cheap: onnxruntime's MinMax
# calibrator keeps only each tensor's min and max per example (measured on the 6-layer MiniLM student: 128
# examples, padded to 128 tokens or not, a few seconds and 0.66 GB resident in all).
CALIBRATION_EXAMPLES = 128


def calibration_feeds(path: Path, data: Encoded) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds for the model at `path`: images as they are; texts padded/truncated to the model's fixed
    length when it has one (as the export's calibration of a static build), else each at its own length —
    the distribution a dynamic-shape model sees (padding would add the ranges of positions the mask ignores)."""
    ids_dims = model_input_dims(path).get("input_ids", [])
    return encoded_feeds(data, model_input_names(path), ids_dims[1] if len(ids_dims) == 2 else None)


def build_baselines(fp32: Path, calib: Encoded | None, out_dir: Path, reduce_range: bool = False) -> dict[str, dict]:
    """{name: {"path", "baseline", "quantization"}} for each baseline built into out_dir, or
    {name: {"baseline", "error"}} for one onnxruntime could not build.

    calib: train examples encoded as the FP32 model is fed (None: unknown, and ptq-static is an error).

    reduce_range: 7-bit weights, as the QAT model uses on an x86 CPU without VNNI (u8s8 kernels saturate int16).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-ptq-") as tmp:
        src, pre = _preprocess(fp32, Path(tmp) / "pre.onnx")
        common = {"weight_type": "int8", "per_channel": True, "reduce_range": reduce_range, "preprocessing": pre,
                  "built_from": fp32.name}

        def dynamic(dst: Path) -> dict:
            dynamic_int8(src, dst, reduce_range)
            return {**common, "activations": "uint8, quantized at run time"}

        def static(dst: Path) -> dict:
            if calib is None:
                raise ValueError(f"no train examples encoded as {fp32.name} is fed to calibrate with")
            feeds = calibration_feeds(src, calib)
            quantize_static(str(src), str(dst), calibration_reader(feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
            return {**common, "activations": "uint8 per-tensor, MinMax-calibrated",
                    "calibration_examples": len(feeds), "calibration_split": "train"}

        for name, build in (("ptq-dynamic", dynamic), ("ptq-static", static)):
            dst = out_dir / f"{name}.onnx"
            try:
                with quiet_ort():
                    facts = build(dst)
                results[name] = {"path": dst, "baseline": BASELINES[name], "quantization": facts}
            except Exception as e:  # noqa: BLE001 — onnxruntime raises anything; a baseline must not break the run
                dst.unlink(missing_ok=True)
                results[name] = {"baseline": BASELINES[name], "error": f"{type(e).__name__}: {e}"[:2000]}
    return results


def _preprocess(fp32: Path, dst: Path) -> tuple[Path, str]:
    """onnxruntime's `quant_pre_process` without its symbolic shape inference: (model to quantize, what was done).

    Symbolic shape inference fails on the Hugging Face transformer exports ("Incomplete symbolic shape
    inference": it cannot broadcast the position slice Min(max_positions, sequence) with sequence) and, failing,
    leaves temporary files in the working directory. The rest of the pre-processing — onnxruntime's basic graph
    optimisation and ONNX shape inference, which give the quantizer the tensor shapes it needs — works on these
    models. Should it fail on another model, the FP32 export is quantized as it is, and the results say why.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_ort():
            quant_pre_process(str(fp32), str(dst), skip_symbolic_shape=True)
        return dst, "quant_pre_process (graph optimisation + ONNX shape inference; no symbolic shape inference)"
    except Exception as e:  # noqa: BLE001
        dst.unlink(missing_ok=True)
        return fp32, f"none: quant_pre_process failed ({type(e).__name__}: {str(e)[:300]})"
