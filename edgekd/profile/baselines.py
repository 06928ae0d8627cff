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

ptq-static's default operator set also quantizes index arithmetic some families compute inside the graph (MPNet's
relative-position buckets: a log of zero calibrates to a NaN scale), and the model it builds then fails at run time.
Such a model is returned as {"error", "failed_at": "run"}, and ptq-static-matmul — the same quantization of the
matrix products alone, what a user of onnxruntime's tools falls back to — is built in its place, so that the run
still shows what quantizing after training would have given.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..data.batching import Encoded
from ..devices.feeds import calibration_reader, encoded_feeds, model_input_dims, model_input_names
from ..devices.runtime import dynamic_int8, quiet_ort, session

# What each baseline is, as the results and reports label it.
BASELINES = {"ptq-dynamic": "onnxruntime quantize_dynamic",
             "ptq-static": "onnxruntime quantize_static (QDQ, MinMax)"}
# Built only where ptq-static's model does not run (see the module's docstring).
MATMUL_ONLY = {"name": "ptq-static-matmul", "baseline": "onnxruntime quantize_static (QDQ, MinMax), MatMul/Gemm only",
               "op_types": ["MatMul", "Gemm"]}
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
    {name: {"baseline", "error"}} for one onnxruntime could not build, {name: {"path", "baseline", "error",
    "failed_at": "run"}} for one it built but cannot run on a calibration example (and then, for ptq-static,
    MATMUL_ONLY's baseline too).

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

        def static(dst: Path, op_types: list[str] | None = None) -> dict:
            if calib is None:
                raise ValueError(f"no train examples encoded as {fp32.name} is fed to calibrate with")
            feeds = calibration_feeds(src, calib)
            with warnings.catch_warnings(record=True) as caught:  # numpy's, on a NaN scale: said, not printed
                warnings.simplefilter("always", RuntimeWarning)
                quantize_static(str(src), str(dst), calibration_reader(feeds), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax,
                                op_types_to_quantize=op_types)
            said = sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})
            _runs(dst, feeds[0], said)
            return {**common, "activations": "uint8 per-tensor, MinMax-calibrated",
                    "calibration_examples": len(feeds), "calibration_split": "train",
                    "op_types": ", ".join(op_types) if op_types else "onnxruntime's default",
                    **({"calibration_warnings": said} if said else {})}

        def attempt(name: str, label: str, build) -> None:
            dst = out_dir / f"{name}.onnx"
            try:
                with quiet_ort():
                    results[name] = {"path": dst, "baseline": label, "quantization": build(dst)}
            except _DoesNotRun as e:  # built: the file stays for whoever wants to look into it
                results[name] = {"path": dst, "baseline": label, "failed_at": "run", "error": str(e)[:2000]}
            except Exception as e:  # noqa: BLE001 — onnxruntime raises anything; a baseline must not break the run
                dst.unlink(missing_ok=True)
                results[name] = {"baseline": label, "error": f"{type(e).__name__}: {e}"[:2000]}

        attempt("ptq-dynamic", BASELINES["ptq-dynamic"], dynamic)
        attempt("ptq-static", BASELINES["ptq-static"], static)
        if results["ptq-static"].get("failed_at") == "run":
            attempt(MATMUL_ONLY["name"], MATMUL_ONLY["baseline"],
                    lambda dst: {**static(dst, MATMUL_ONLY["op_types"]), "instead_of": "ptq-static, which does not run"})
    return results


class _DoesNotRun(Exception):
    """A baseline onnxruntime built but cannot run."""


def _runs(path: Path, feed: dict[str, np.ndarray], calibration_warnings: list[str]) -> None:
    """Raise _DoesNotRun unless onnxruntime runs the model at `path` on one feed to finite outputs (saying what
    the calibration warned of, the likely cause)."""
    why = f" (calibration warned: {'; '.join(calibration_warnings)})" if calibration_warnings else ""
    try:
        outputs = session(path, threads=1).run(None, feed)
    except Exception as e:  # noqa: BLE001 — onnxruntime raises anything
        raise _DoesNotRun(f"{type(e).__name__}: {e}{why}") from e
    if not all(np.isfinite(o).all() for o in outputs):
        raise _DoesNotRun(f"onnxruntime runs {path.name} to non-finite outputs (NaN or infinity){why}")


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
