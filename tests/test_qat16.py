"""qat.activation_dtype: uint16 — QAT for the w8a16 NPU scheme: ranges trained at 16-bit steps, the NPU build in
16-bit activations on those ranges, the CPU model at 8-bit steps over them (what CPU integer kernels take)."""
from __future__ import annotations

import pytest
import torch
import yaml

from conftest import reuse_stages
from edgekd.configs import QATConfig
from edgekd.devices import qnn
from edgekd.models.spec import load_model_from_artifact
from edgekd.pipeline import Pipeline
from edgekd.quantize.fakequant import _FakeQuantMixin, eight_bit_activations
from edgekd.recipe import validate_recipe


def test_uint16_activations_mean_16_bits_and_a_mismatch_is_refused():
    assert QATConfig(activation_dtype="uint16").activation_bits == 16
    assert QATConfig().activation_bits == 8
    with pytest.raises(ValueError, match="16-bit activations are activation_dtype: uint16"):
        QATConfig(activation_bits=16)
    with pytest.raises(ValueError, match="activation_bits 8 does not fit activation_dtype 'uint16'"):
        QATConfig(activation_dtype="uint16", activation_bits=8)


@pytest.mark.slow
def test_a_uint16_qat_trains_16_bit_ranges_ships_8_bit_steps_to_the_cpu_and_16_bit_to_the_npu(text_run, tmp_path):
    root, _, _ = text_run
    out = tmp_path / "out"
    reuse_stages(root / "out", out, ("teacher", "distill", "prune"))
    recipe = yaml.safe_load((root / "recipe.yaml").read_text())
    recipe.update(output=str(out), profiles=["host-cpu", "hexagon-npu-w8a16"])
    recipe["stages"][2]["qat"]["activation_dtype"] = "uint16"
    recipe["stages"][3]["export"].update(devices=["hexagon-npu-w8a16"], device_min_agreement=0.95, teacher=False)
    recipe["stages"] = recipe["stages"][:4]  # no profile stage: the export says what this test checks
    pipe = Pipeline(validate_recipe(recipe))
    pipe.run()
    arts = {a.stage: a for a in pipe.artifacts}
    assert arts["qat"].spec["quant"]["scheme"]["activation_dtype"] == "uint16"
    model = load_model_from_artifact(arts["qat"])
    layers = [m for m in model.modules() if isinstance(m, _FakeQuantMixin)]
    assert layers and all(m.act_qrange == (0, 65535) for m in layers)
    # 16-bit steps: the fake-quantization error of a layer's input is about 256 times smaller than at 8-bit steps
    m = next(m for m in layers if hasattr(m, "weight"))
    x = torch.empty(4096).uniform_(float(m.act_min), float(m.act_max))
    err16 = (m._quant_input(x) - x).abs().max()
    with eight_bit_activations(model) as switched:
        assert switched == len(layers) and m.act_qrange == (0, 255)
        err8 = (m._quant_input(x) - x).abs().max()
    assert m.act_qrange == (0, 65535) and err8 > 100 * err16
    # the CPU model: 8-bit QDQ over the trained ranges, said in the manifest, validated against the 16-bit model
    manifest = arts["export"].manifest
    assert "exported at 8-bit steps over the same ranges" in manifest["onnx"]["activations"]
    assert arts["export"].metrics["validation"]["argmax_agreement"] >= 0.95
    # the NPU build: 16-bit activations on the same ranges, on the HTP where onnxruntime-qnn is installed
    device = manifest["devices"]["hexagon-npu-w8a16"]
    assert device["validation"]["argmax_agreement"] >= 0.95
    assert device["onnx"]["quantization"]["activation_dtype"] == "uint16"
    assert "QAT ranges for the inputs of" in device["onnx"]["quantization"]["ranges"]
    assert device["weights"]["from"] == "qat"  # QAT trained for the build's 16-bit activations: its own weights
    if qnn.available():
        htp = device["htp"]
        assert htp["placement"]["cpu_nodes"] == 0 and htp["argmax_agreement"] >= 0.98, htp

