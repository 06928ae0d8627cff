"""The peer most users take today, with Optimum itself: run by the Optimum environment's Python (.venv-optimum,
`make bench-env`), not edgekd's — Optimum pins transformers < 4.58, edgekd uses 5.x.

    .venv-optimum/bin/python benchmarks/optimum_peer.py HF_MODEL_DIR OUT_DIR [--vnni]

1. `optimum-cli export onnx --task text-classification` (optimum.exporters.onnx.main_export);
2. what `optimum-cli onnxruntime quantize` does for this CPU: dynamic INT8, per channel, with the preset of the
   CPU — avx512_vnni where it has VNNI, else avx2 with reduce_range (u8s8 kernels without VNNI saturate int16;
   the CLI has no flag for it, so the Python API it calls is used with the preset's other defaults).
Prints the facts as JSON on the last line.
"""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path


def main(hf_dir: str, out_dir: str, vnni: bool) -> None:
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    out = Path(out_dir)
    fp32 = out / "fp32"
    main_export(hf_dir, output=fp32, task="text-classification", no_post_process=False)
    if vnni:
        qconfig, preset = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True), "avx512_vnni"
    else:
        qconfig, preset = AutoQuantizationConfig.avx2(is_static=False, per_channel=True, reduce_range=True), "avx2"
    ORTQuantizer.from_pretrained(fp32).quantize(save_dir=out / "int8", quantization_config=qconfig)
    model = next((out / "int8").glob("*.onnx"))
    print(json.dumps({"tool": f"Optimum {version('optimum')} / optimum-onnx {version('optimum-onnx')}: "
                              f"export onnx + ORTQuantizer dynamic, {preset} preset, per_channel",
                      "preset": preset, "reduce_range": qconfig.reduce_range, "per_channel": qconfig.per_channel,
                      "format": str(qconfig.format), "operators": list(qconfig.operators_to_quantize),
                      "transformers": version("transformers"), "onnxruntime": version("onnxruntime"),
                      "file": str(model)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--vnni" in sys.argv[3:])
