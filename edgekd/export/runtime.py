"""Running an exported model with onnxruntime on encoded data (for validation and accuracy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.batching import Encoded
from ..progress import progress


def session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_logits(path: str | Path, data: Encoded, batch_size: int = 32, desc: str = "onnx predict") -> np.ndarray:
    """Logits of the ONNX model for every example, in order (batched by length like predict_logits)."""
    sess = session(path)
    names = {i.name for i in sess.get_inputs()}
    n = len(data)
    order = np.argsort([len(x) for x in data.ids], kind="stable") if data.ids is not None else np.arange(n)
    chunks = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    out = None
    with progress(len(chunks), desc) as advance:
        for idx in chunks:
            feed = {k: v.numpy() for k, v in data.batch(idx).items() if k in names}
            logits = sess.run(None, feed)[0]
            if out is None:
                out = np.zeros((n, logits.shape[1]), dtype=np.float32)
            out[idx] = logits
            advance()
    return out
