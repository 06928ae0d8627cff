"""Quantization-aware training: fake-quant layers, calibration, freezing."""
