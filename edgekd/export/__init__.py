"""ONNX export: QDQ graphs, weight folding, validation against PyTorch."""
