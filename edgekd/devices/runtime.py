"""Running an exported model with onnxruntime on encoded data (for validation and accuracy)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..data.batching import Encoded
from ..progress import progress


@contextmanager
def quiet_ort() -> Iterator[None]:
    """onnxruntime's quantization tools log advice on the root logger ('consider pre-processing' ...)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def dynamic_int8(src: str | Path, dst: str | Path, reduce_range: bool = False) -> Path:
    """onnxruntime's dynamic INT8 of an FP32 model: int8 weights per channel (7-bit with reduce_range: x86 without
    VNNI), activations quantized at run time, embedding tables gathered in int8. The one call of it in edgekd: the
    export's layout candidate, each pruning step's INT8 stand-in and the profile stage's PTQ baseline."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_ort():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
    return Path(dst)


def session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_logits(path: str | Path, data: Encoded, batch_size: int = 32, desc: str = "onnx predict") -> np.ndarray:
    """Logits of the ONNX model for every example, in order (batched by length like predict_logits)."""
    sess = session(path)
    static = static_shapes(sess)
    if static is not None:  # a static-shape (NPU) model takes batch 1 at its fixed length
        return static_onnx_logits(sess, fit_to_static(data, static), static, desc)
    names = {i.name for i in sess.get_inputs()}
    n = len(data)
    order = np.argsort([len(x) for x in data.ids], kind="stable") if data.ids is not None else np.arange(n)
    chunks = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    out = None
    with progress(len(chunks), desc) as advance:
        for idx in chunks:
            feed = {k: v.numpy() for k, v in data.batch(idx).items() if k in names}
            if "token_type_ids" in names:  # BERT exports that take segment ids (Optimum's do): one segment
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            logits = sess.run(None, feed)[0]
            if out is None:
                out = np.zeros((n, logits.shape[1]), dtype=np.float32)
            out[idx] = logits
            advance()
    return out


def static_shapes(sess) -> dict[str, list[int]] | None:
    """{input: shape} when every input dimension is fixed, else None."""
    shapes = {i.name: list(i.shape) for i in sess.get_inputs()}
    if all(isinstance(d, int) and d > 0 for shape in shapes.values() for d in shape):
        return shapes
    return None


def fit_to_static(data: Encoded, static: dict[str, list[int]]) -> Encoded:
    if data.ids is None or "input_ids" not in static:
        return data
    seq_len = static["input_ids"][1]
    ids = [x if len(x) <= seq_len else x[: seq_len - 1] + [x[-1]] for x in data.ids]  # as encode(): keep [SEP]
    return Encoded(data.labels, ids=ids, pad_id=data.pad_id, truncated=data.truncated)


def static_onnx_logits(sess, data: Encoded, static: dict[str, list[int]], desc: str) -> np.ndarray:
    """Logits of a static-shape model, one example per run (batch 1), texts padded to its length."""
    from .feeds import encoded_feeds

    feeds = encoded_feeds(data, list(static), static["input_ids"][1] if data.ids is not None else None)
    rows = []
    with progress(len(feeds), desc) as advance:
        for f in feeds:
            rows.append(sess.run(None, f)[0])
            advance()
    return np.concatenate(rows).astype(np.float32)
