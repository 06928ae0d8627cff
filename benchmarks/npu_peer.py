"""The NPU baseline: onnxruntime's own QNN recipe applied to edgekd's pruned FP32 student, on Qualcomm's compiler.

peer-npu-qnn-ptq-<scheme> is what a user with the same FP32 model would build for the HTP without edgekd, following
onnxruntime's QNN documentation and Olive's QNN workflow: torch's exporter at the static shape of edgekd's build
([1, 128] for SST-2's max_length); the attention mask's fill value (float32's lowest) set to -1e4, as Olive's
ReplaceAttentionMaskValue surgery does — left alone, MinMax calibration spreads the score Adds' 8 or 16 bits over
float32's range and the quantized model answers one class for every sentence (docs/devices.md); `qnn_preprocess_model` (Gelu and LayerNormalization fused); then
`get_qnn_qdq_config` static PTQ in the profile's scheme (uint8 or uint16 activations, the profile's weight type and
granularity, MinMax) calibrated on the 64 train texts edgekd's own NPU export calibrates on, and `quantize`. Nothing of
edgekd's NPU build is applied: no QAT, no learned ranges, no rebuilt attention mask, no int32 embedding rows. It is
then compiled for the profile's HTP and run on the test split by onnxruntime-qnn's HTP backend, exactly as edgekd's
builds are (the export stage's on_htp): placement, each rejected node with QNN's reason, accuracy, and argmax agreement
with the PyTorch model it was made from, on a context binary. Cached per pruned artifact and profile.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnx

# Olive's ReplaceAttentionMaskValue defaults: a mask fill value at or below the threshold becomes the replacement
FILL_THRESHOLD, FILL_VALUE = -3e30, -1e4


def qnn_ptq_peer(model, ctx, profile_name: str, folder: Path, seq_len: int, htp_examples: int | None) -> dict:
    """Build (or take from `folder`) the peer for `profile_name` at static shape [1, seq_len] (edgekd's build's); returns
    its facts, with "htp" shaped as an edgekd build's manifest entry (benchmarks.sst2.npu_system reads both)."""
    facts_file = folder / "facts.json"
    if facts_file.is_file():
        return json.loads(facts_file.read_text())
    from edgekd.configs import ExportConfig
    from edgekd.devices.profiles import load_profile
    from edgekd.export.stage import on_htp

    profile = load_profile(profile_name)
    folder.mkdir(parents=True, exist_ok=True)
    facts = {"tool": "torch.onnx.export (static) + onnxruntime qnn_preprocess_model + get_qnn_qdq_config + quantize "
                     "(QDQ, MinMax)", **_build(model, ctx, profile, seq_len, folder / "model.onnx")}
    # where the HTP leaves nodes of the baseline to the CPU, its row says so: a finding, not a failure
    facts["htp"] = on_htp(model, folder, profile, ExportConfig(npu_fallback="allow", htp_examples=htp_examples),
                          ctx.encoded("test"), folder.name)
    facts_file.write_text(json.dumps(facts, indent=2))
    return facts


def _build(model, ctx, profile, seq_len: int, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    from edgekd.devices.feeds import calibration_reader, encoded_feeds
    from edgekd.devices.runtime import quiet_ort
    from edgekd.export.stage import CALIBRATION_EXAMPLES  # the texts edgekd's NPU export calibrates on
    from edgekd.models.onnx_graph import LogitsOnly, example_inputs, torch_to_onnx

    inputs = example_inputs(ctx.task, ctx.data.preprocess, seq_len)
    feeds = encoded_feeds(ctx.encoded("train", CALIBRATION_EXAMPLES), list(inputs), seq_len)

    scheme = profile.quantization
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16}
    with tempfile.TemporaryDirectory(prefix="edgekd-qnn-ptq-") as tmp:
        raw, pre = Path(tmp) / "raw.onnx", Path(tmp) / "pre.onnx"
        graph = torch_to_onnx(LogitsOnly(model.eval(), list(inputs)), inputs, raw, profile.opset or 17,
                              static_shapes=True)
        replaced = _mask_fill_value(graph)
        onnx.save(graph, str(raw))
        with quiet_ort():
            src = pre if qnn_preprocess_model(raw, pre, fuse_layernorm=True) else raw
            config = get_qnn_qdq_config(str(src), calibration_reader(feeds),
                                        activation_type=qtype[scheme.activation_dtype],
                                        weight_type=qtype[scheme.weight_dtype],
                                        per_channel=scheme.weight_granularity == "per-channel")
            quantize(str(src), str(dst), config)
    return {"seq_len": seq_len, "calibration_examples": len(feeds), "mask_fill_values_replaced": replaced,
            "activation_dtype": scheme.activation_dtype, "weight_dtype": scheme.weight_dtype,
            "weight_granularity": scheme.weight_granularity}


def _mask_fill_value(graph) -> int:
    """Olive's ReplaceAttentionMaskValue idea, in place: float constants at or below -3e30 become -1e4 (written here
    because the peer must not depend on Olive). Returns how many tensors changed."""
    import numpy as np
    from onnx import numpy_helper

    tensors = list(graph.graph.initializer) + [a.t for n in graph.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    changed = 0
    for t in tensors:
        if t.data_type != onnx.TensorProto.FLOAT or np.prod(t.dims, dtype=np.int64) > 1:
            continue
        a = numpy_helper.to_array(t)
        if (a <= FILL_THRESHOLD).any():
            t.CopyFrom(numpy_helper.from_array(np.where(a <= FILL_THRESHOLD, FILL_VALUE, a).astype(np.float32), t.name))
            changed += 1
    return changed
