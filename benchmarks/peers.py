"""The systems a user would pick instead of edgekd, built from the same teacher and student.

- peer-teacher-dynamic-int8: what `optimum-cli export onnx` + `optimum-cli onnxruntime quantize` do for this
  CPU. With Optimum itself where its environment exists (`make bench-env`: .venv-optimum, Optimum 2.1 with
  transformers 4.57 — it cannot share edgekd's environment, which has transformers 5), run by optimum_peer.py.
  Without it, its steps are reproduced with torch's exporter and onnxruntime's own quantization API (and the
  results say so): the three BERT inputs (input_ids, attention_mask, token_type_ids) with dynamic batch and
  sequence, `logits` out, constant folding, opset 14; then dynamic quantization in QOperator form of MatMul,
  uint8 asymmetric activations, int8 symmetric weights per channel, `reduce_range` where the CPU lacks VNNI.
- peer-torch-dynamic-int8: torch.ao.quantization.quantize_dynamic of the teacher's nn.Linear layers (timed in
  PyTorch by torch_latency.py).
- peer-student-static-ptq: edgekd's own distilled and pruned student, quantized after training by onnxruntime's
  static QDQ quantization (uint8 activations, int8 per-channel weights, MinMax calibration on train sentences)
  instead of QAT: what QAT buys.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

OPTIMUM_BERT_OPSET = 14
OPTIMUM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-optimum" / "bin" / "python"


def optimum_peer(teacher_model, tokenizer_dir: Path, work: Path, vnni: bool) -> tuple[Path, dict]:
    """(quantized ONNX file, facts): with Optimum's own code where its environment exists, else reproduced."""
    import json
    import shutil
    import subprocess

    if not OPTIMUM_PYTHON.is_file():
        raw, dyn = work / "optimum-style-fp32.onnx", work / "optimum-style-dynint8.onnx"
        optimum_style_export(teacher_model, raw)
        facts = optimum_avx2_dynamic_int8(raw, dyn, vnni)
        facts["optimum"] = "not installed (make bench-env): Optimum's steps reproduced with onnxruntime's API"
        return dyn, facts
    from edgekd.models.hf import transformers_quiet

    hf = work / "teacher-hf"
    with transformers_quiet():
        teacher_model.save_pretrained(str(hf))
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy2(f, hf / f.name)
    proc = subprocess.run([str(OPTIMUM_PYTHON), str(Path(__file__).with_name("optimum_peer.py")), str(hf),
                           str(work / "optimum"), *(["--vnni"] if vnni else [])], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"Optimum failed:\n{proc.stderr[-3000:]}")
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(facts["file"]), facts


def optimum_style_export(model: torch.nn.Module, path: Path) -> Path:
    """The teacher as Optimum exports a BERT classifier: three inputs, dynamic batch and sequence, opset 14."""
    from edgekd.models.onnx_graph import LogitsOnly, torch_to_onnx

    ids = torch.full((1, 16), 5, dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    torch_to_onnx(LogitsOnly(model.eval(), list(inputs)), inputs, path, OPTIMUM_BERT_OPSET)
    onnx.checker.check_model(str(path))
    return path


def optimum_avx2_dynamic_int8(src: Path, dst: Path, vnni: bool) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekd.devices.runtime import quiet_ort

    reduce_range = not vnni
    with quiet_ort():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Add"], per_channel=True,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return {"tool": "onnxruntime.quantization.quantize_dynamic (Optimum avx2 preset: QOperator, u8 activations, "
                    "s8 symmetric per-channel weights, MatMul/Add)", "reduce_range": reduce_range,
            "export_opset": OPTIMUM_BERT_OPSET}


def static_ptq(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], vnni: bool,
               op_types: list[str] | None = None) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgekd.devices.feeds import calibration_reader
    from edgekd.devices.runtime import quiet_ort

    with quiet_ort():
        quantize_static(str(src), str(dst), calibration_reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=not vnni, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types)
    return {"tool": "onnxruntime.quantization.quantize_static (QDQ, u8 activations, s8 per-channel weights, MinMax)",
            "calibration_examples": len(feeds), "reduce_range": not vnni,
            "op_types": op_types or "onnxruntime's default"}


def torch_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def torch_size_mb(model: torch.nn.Module) -> float:
    """Bytes of the quantized model's state (weights packed as torch stores them), in MB."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # written to measure its size, never loaded
    return buf.tell() / 1e6
