"""Anchor the latency estimates of absent devices to published on-device measurements.

    python -m benchmarks.anchors        # a few minutes on 2 cores: exports BERT-base, DistilBERT, MobileBERT

The estimator (edgekd/devices/estimate.py) is fitted on the host; on a device that is not present it is only as good
as its cost model and the profile's peak figures. Each published measurement below is of a public model architecture
(random weights: the timing of a graph does not depend on its values) at the shape, precision and thread count the
publication states. We build that graph as edgekd would build it for the device, estimate it with the profile's
figures (or, where the measured hardware is not the profile's reference part, with that hardware's own figures,
stated in `figures`), and record the error:

    error = |published - estimated| / estimated

relative to the estimate, so that an estimate x (1 + error) covers the published time. A profile's error is its
largest anchor error. Results: profiles/calibration/anchors.json (package data, read by the profile stage and the
recommender: an estimate is labelled with its profile's anchored error, or "unanchored estimate") and
benchmarks/results/anchors.json (with the machine, versions and commit). Rerun after changing the estimator, its
calibration or a profile's figures: tests/test_anchors.py checks that the file matches the shipped calibration.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .machine import commit, host_facts, versions

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDGEKD_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "runs" / "anchors"
RESULT = ROOT / "benchmarks" / "results" / "anchors.json"
AI_HUB = "qualcomm/ai-hub-models @b61a009028de5420032377d9e6bd7280aae24c74"

# Pixel 4 (Snapdragon 855): one Cortex-A76 at 2.84 GHz and three at 2.42 GHz, the Raspberry Pi 5's core. Peaks as
# the profiles derive them: 16 FP32 FLOP/cycle (two 128-bit FMA pipes), 4x that in int8 dot products; LPDDR4X-4266
# on a 64-bit bus.
PIXEL4 = {"peak_fp32_gflops": (2.84 + 3 * 2.42) * 16, "peak_int8_gops": (2.84 + 3 * 2.42) * 64,
          "memory_bandwidth_gbs": 34.1, "compute_units": 4}
# GCP n2-standard-16 (Cascade Lake, 8 physical cores at 2.8 GHz base): 64 FP32 FLOP/cycle (two AVX-512 FMA units),
# VNNI 4x; six DDR4-2933 channels per socket (the VM's share of them is not published).
CASCADE_LAKE_8 = {"peak_fp32_gflops": 8 * 2.8 * 64, "peak_int8_gops": 8 * 2.8 * 256,
                  "memory_bandwidth_gbs": 140.8, "compute_units": 8}

PUBLISHED = [
    {"id": "galaxy-s24-bert-base-w8a16", "profiles": ["hexagon-npu", "hexagon-npu-w8a16"],
     "model": "bert-base", "head": "masked-lm", "seq_len": 384, "precision": "w8a16", "threads": 1,
     "published_ms": 14.841, "runtime": "ONNX Runtime with the QNN execution provider, 571 of 571 layers on the NPU",
     "hardware": "Samsung Galaxy S24 (Snapdragon 8 Gen 3), the profile's own SoC",
     "also": {"qnn_context_binary_ms": 9.155},
     "source": f"{AI_HUB} qai_hub_models/models/bert_base_uncased_hf/perf.yaml (input 1x384: "
               "_shared/bert_hf/model.py get_input_spec)"},
    {"id": "galaxy-s24-distilbert-w8a16", "profiles": ["hexagon-npu", "hexagon-npu-w8a16"],
     "model": "distilbert", "head": "masked-lm", "seq_len": 384, "precision": "w8a16", "threads": 1,
     "published_ms": 8.409, "runtime": "ONNX Runtime with the QNN execution provider, 300 of 300 layers on the NPU",
     "hardware": "Samsung Galaxy S24 (Snapdragon 8 Gen 3), the profile's own SoC",
     "also": {"qnn_context_binary_ms": 5.214},
     "source": f"{AI_HUB} qai_hub_models/models/distil_bert_base_uncased_hf/perf.yaml"},
    {"id": "pixel4-mobilebert-fp32", "profiles": ["phone-big-core", "rpi5-cortex-a76"],
     "model": "mobilebert", "head": "question-answering", "seq_len": 384, "precision": "fp32", "threads": 4,
     "published_ms": 74.0, "runtime": "TensorFlow Lite CPU, 4 threads (edgekd estimates onnxruntime's CPU provider)",
     "hardware": "Google Pixel 4 (Snapdragon 855, Cortex-A76 cores): the Raspberry Pi 5's core; a phone, but an "
                 "older core than phone-big-core's Cortex-X4", "figures": PIXEL4,
     "source": "tensorflow/tensorflow @73265b0c0facef249462e5ab0b3a65477a757ea8 "
               "tensorflow/lite/g3doc/examples/bert_qa/overview.md (MobileBERT, 'Pixel 4 (Android 10) 74ms', "
               "4 threads; MAX_SEQ_LEN 384 in tensorflow/examples lite/examples/bert_qa QaClient.java)"},
    {"id": "cascade-lake-bert-base-int8", "profiles": ["x86-server-vnni"],
     "model": "bert-base", "head": "none", "seq_len": 128, "precision": "int8-dynamic", "threads": 8,
     "published_ms": 19.76, "runtime": "ONNX Runtime 1.6, dynamic INT8 (onnxruntime's transformers benchmark -p int8 -o)",
     "hardware": "GCP n2-standard-16 (Intel Cascade Lake, 8 physical cores, AVX-512 VNNI)", "figures": CASCADE_LAKE_8,
     "source": "https://github.com/microsoft/onnxruntime/issues/6695 ('8 core Cascade Lake (GCP n2-standard-16) "
               "fp32: 31.46 int8: 19.76', benchmark -m bert-base-uncased -b 1 -s 128)"},
    {"id": "cascade-lake-bert-base-fp32", "profiles": ["x86-server-vnni"],
     "model": "bert-base", "head": "none", "seq_len": 128, "precision": "fp32", "threads": 8,
     "published_ms": 31.46, "runtime": "ONNX Runtime 1.6, FP32 (onnxruntime's transformers benchmark -o)",
     "hardware": "GCP n2-standard-16 (Intel Cascade Lake, 8 physical cores, AVX-512 VNNI)", "figures": CASCADE_LAKE_8,
     "source": "https://github.com/microsoft/onnxruntime/issues/6695"},
]


def _network(model: str, head: str):
    """The public architecture at its published size, random weights, wrapped to return one tensor as `logits`."""
    import torch
    from transformers import (BertConfig, BertForMaskedLM, BertModel, DistilBertConfig, DistilBertForMaskedLM,
                              MobileBertConfig, MobileBertForQuestionAnswering)

    torch.manual_seed(0)
    build = {("bert-base", "masked-lm"): lambda: BertForMaskedLM(BertConfig()),
             ("bert-base", "none"): lambda: BertModel(BertConfig(), add_pooling_layer=False),
             ("distilbert", "masked-lm"): lambda: DistilBertForMaskedLM(DistilBertConfig()),
             ("mobilebert", "question-answering"): lambda: MobileBertForQuestionAnswering(MobileBertConfig())}
    net = build[(model, head)]().eval()

    class Logits(torch.nn.Module):  # export_onnx and export_for_device read `.logits`
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask):
            out = self.net(input_ids=input_ids, attention_mask=attention_mask)
            return type("Out", (), {"logits": out[0]})()

    return Logits()


def _build(anchor: dict) -> Path:
    """The ONNX graph edgekd would build for the anchor's precision (cached under runs/anchors/)."""
    import numpy as np
    import torch

    from edgekd.devices.profiles import load_profile
    from edgekd.export.device import export_for_device
    from edgekd.export.onnx_export import export_onnx

    name = f"{anchor['model']}-{anchor['head']}-s{anchor['seq_len']}-{anchor['precision']}"
    path = MODELS_DIR / name / "model.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    seq = anchor["seq_len"]
    ids = torch.randint(1000, 2000, (1, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    net = _network(anchor["model"], anchor["head"])
    if anchor["precision"] == "w8a16":
        rng = np.random.default_rng(0)
        feeds = [{"input_ids": rng.integers(1000, 2000, (1, seq)).astype(np.int64),
                  "attention_mask": np.ones((1, seq), np.int64)} for _ in range(4)]
        export_for_device(net, inputs, path.parent, load_profile("hexagon-npu-w8a16"), feeds, opset=17)
    elif anchor["precision"] == "fp32":
        export_onnx(net, inputs, path, 17, static_shapes=False)
    elif anchor["precision"] == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = _build({**anchor, "precision": "fp32"})
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    else:
        raise ValueError(anchor["precision"])
    return path


def main(argv: list[str] | None = None) -> int:
    from edgekd.devices.anchors import SHIPPED_ANCHORS, anchored_error, calibration_sha256
    from edgekd.devices.estimate import calibration_path, estimate_latency, load_calibration
    from edgekd.devices.profiles import load_profile

    cal = load_calibration()
    rows = []
    for anchor in PUBLISHED:
        start = time.perf_counter()
        path = _build(anchor)
        for name in anchor["profiles"]:
            profile = load_profile(name)
            if anchor.get("figures"):
                profile = profile.model_copy(update=anchor["figures"])
            est = estimate_latency(path, profile, anchor["seq_len"], anchor["threads"], cal)["ms"]
            rows.append({**{k: v for k, v in anchor.items() if k not in ("profiles", "figures")}, "profile": name,
                         "figures": anchor.get("figures") or "the profile's own", "estimated_ms": round(est, 3),
                         "error": round(abs(anchor["published_ms"] - est) / est, 3),
                         "published_over_estimated": round(anchor["published_ms"] / est, 3)})
            print(f"{name:20s} {anchor['id']:32s} published {anchor['published_ms']:8.2f} ms  "
                  f"estimated {est:8.2f} ms  ratio {anchor['published_ms'] / est:5.2f}", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    profiles = {}
    for r in rows:
        p = profiles.setdefault(r["profile"], {"anchors": []})
        p["anchors"].append({k: r[k] for k in ("id", "hardware", "model", "seq_len", "precision", "threads",
                                               "published_ms", "estimated_ms", "error", "source")})
    for p in profiles.values():
        p["error"] = anchored_error(p["anchors"])
    shipped = {"version": 1, "calibration_sha256": calibration_sha256(calibration_path()),
               "error_definition": "|published - estimated| / estimated; a profile's error is its largest anchor's",
               "profiles": profiles}
    SHIPPED_ANCHORS.write_text(json.dumps(shipped, indent=2) + "\n", encoding="utf-8")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"machine": host_facts(), "versions": versions(), "commit": commit(),
                                  "anchors": rows, "profiles": {k: v["error"] for k, v in profiles.items()}},
                                 indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SHIPPED_ANCHORS} and {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
