"""Is a hardware-aligned FFN width faster than an odd one? (issue 12, item 3: width_multiple in the profiles)

    python -m benchmarks.aligned_widths        # about 5 minutes on 2 cores

A 2-layer BERT of the flagship student's shape (hidden 384, 12 heads of 32) with FFN widths around 760:
multiples of 16 and 8, and odd widths a few channels away. Each is exported to ONNX (FP32, and onnxruntime's
dynamic INT8 per channel as the integer-kernel case) and timed at batch 1, sequence 128, 1 thread, in fresh
processes, the widths in alternating order over several rounds (the quietest round counts). The figure that
matters is the latency per FFN channel: an aligned width must not cost more per channel than an odd one.
Random weights: latency does not depend on their values.
"""
from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

WIDTHS = [752, 757, 760, 763, 768, 771]  # 16x47, odd, 8x95, odd, 16x48 (=2x384), odd
ROUNDS = 5
RUNS = 40


def main() -> None:
    import numpy as np
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertConfig, BertForSequenceClassification

    from edgekd.devices.latency import combine_rounds, measure_latency
    from edgekd.devices.runtime import quiet_ort
    from edgekd.models.onnx_graph import LogitsOnly, example_inputs, torch_to_onnx
    from .machine import commit, host_facts, versions

    inputs = example_inputs("text-classification", {}, 128)
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
              "attention_mask": np.ones((1, 128), dtype=np.int64)} for _ in range(8)]
    with tempfile.TemporaryDirectory(prefix="edgekd-widths-") as tmp:
        files = {}
        for w in WIDTHS:
            torch.manual_seed(0)
            model = BertForSequenceClassification(BertConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                                                             intermediate_size=w)).eval()
            fp32 = Path(tmp) / f"w{w}.onnx"
            torch_to_onnx(LogitsOnly(model, list(inputs)), inputs, fp32, 17)
            int8 = Path(tmp) / f"w{w}-int8.onnx"
            with quiet_ort():
                quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
            files[(w, "fp32")], files[(w, "int8")] = fp32, int8
        rounds: dict = {k: [] for k in files}
        for r in range(ROUNDS):
            for k in (list(files) if r % 2 == 0 else list(files)[::-1]):
                rounds[k].append(measure_latency(files[k], feeds, 1, warmup=5, runs=RUNS))
    rows = []
    for w in WIDTHS:
        row = {"ffn_width": w, "multiple_of_16": w % 16 == 0, "multiple_of_8": w % 8 == 0}
        for kind in ("fp32", "int8"):
            p50 = combine_rounds(rounds[(w, kind)])["p50"]
            row[f"{kind}_p50_ms"] = p50
            row[f"{kind}_us_per_channel"] = 1000 * p50 / w
        rows.append(row)
        print(f"FFN {w:4d} ({'x16' if w % 16 == 0 else 'x8 ' if w % 8 == 0 else 'odd'}): FP32 {row['fp32_p50_ms']:.3f} ms, "
              f"INT8 {row['int8_p50_ms']:.3f} ms")
    verdict = {}
    for kind in ("fp32", "int8"):
        aligned = [r[f"{kind}_p50_ms"] for r in rows if r["multiple_of_16"]]
        odd = [r[f"{kind}_p50_ms"] for r in rows if not r["multiple_of_8"]]
        # compare each odd width with the next aligned width above it (more channels, yet not slower?)
        pairs = [(r["ffn_width"], next(a for a in rows if a["multiple_of_16"] and a["ffn_width"] > r["ffn_width"])["ffn_width"])
                 for r in rows if not r["multiple_of_8"] and any(a["multiple_of_16"] and a["ffn_width"] > r["ffn_width"]
                                                                  for a in rows)]
        by = {r["ffn_width"]: r[f"{kind}_p50_ms"] for r in rows}
        verdict[kind] = {"aligned_mean_ms": float(np.mean(aligned)), "odd_mean_ms": float(np.mean(odd)),
                         "odd_vs_next_aligned": [{"odd": o, "aligned": a, "odd_ms": by[o], "aligned_ms": by[a],
                                                  "aligned_over_odd": by[a] / by[o]} for o, a in pairs]}
    out = HERE / "results" / "aligned-widths.json"
    out.write_text(json.dumps({"benchmark": "aligned-widths", "case": "batch 1, sequence 128, 1 thread",
                               "model": "BERT, 2 layers, hidden 384, 12 heads", "rows": rows, "verdict": verdict,
                               "rounds": ROUNDS, "runs": RUNS, "machine": host_facts(), "versions": versions(),
                               "commit": commit(), "date": datetime.date.today().isoformat()}, indent=2) + "\n")
    print(json.dumps(verdict, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
