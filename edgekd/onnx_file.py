"""Checks on an ONNX file given by a user, before onnxruntime touches it."""
from __future__ import annotations

from pathlib import Path

from .errors import ModelError


def check_onnx_file(path: Path):
    """Refuse a missing, non-ONNX or truncated file, and external data that leaves the model's folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{str(path)!r} is a folder; give the path of an .onnx file (e.g. <export>/model.onnx).")
    if not path.is_file():
        raise ModelError(f"ONNX file {str(path)!r} does not exist.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{str(path)!r} is not a valid ONNX model (truncated or another format): {e}".strip()) from None
    if not model.graph.node:
        raise ModelError(f"{str(path)!r} parsed as ONNX but has no graph nodes: it is truncated or not an ONNX model.")
    root = path.resolve().parent
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            target = (root / loc).resolve()
            if not target.is_relative_to(root):
                raise ModelError(
                    f"{str(path)!r}: tensor {t.name!r} points to external data {loc!r} outside the model's folder; "
                    "edgekd refuses it (a crafted model could read arbitrary files). Keep external data beside the model."
                )
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{str(path)!r} fails the ONNX checker: {str(e).splitlines()[0]}") from None
    return model
