"""How a model is fed on a device: batch-1 input feeds for text and image models, and the inputs an ONNX
file declares. Shared by export (calibration, validation of static builds) and profile (timing)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..data.batching import Encoded


def text_feeds(
    token_ids: list[list[int]], input_names: list[str], seq_len: int | None, pad_id: int = 0
) -> list[dict[str, np.ndarray]]:
    """Batch-1 int64 feeds; padded/truncated to seq_len, or each text at its own length if None."""
    known = {"input_ids", "attention_mask", "token_type_ids"}
    unknown = [n for n in input_names if n not in known]
    if unknown:
        raise ValueError(f"cannot build text feeds for model inputs {unknown}; known: {sorted(known)}")
    feeds = []
    for i, ids in enumerate(token_ids):
        ids = list(ids)[:seq_len] if seq_len is not None else list(ids)
        if not ids:
            raise ValueError(f"text {i} has no tokens")
        mask = [1] * len(ids)
        if seq_len is not None:
            pad = seq_len - len(ids)
            ids, mask = ids + [pad_id] * pad, mask + [0] * pad
        # token_type_ids: BERT-style exports may take it as an input; one segment -> zeros.
        arrays = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.asarray([mask], dtype=np.int64),
            "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
        }
        feeds.append({name: arrays[name] for name in input_names})
    return feeds


def encoded_feeds(data: "Encoded", input_names: list[str], seq_len: int | None = None,
                  limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds of the first `limit` examples of a split: images as they are, texts padded/truncated to
    seq_len (or each at its own length when None)."""
    if data.images is not None:
        return image_feeds(data.images[:limit], input_names[0])
    return text_feeds(data.ids[:limit], input_names, seq_len, data.pad_id)


def calibration_reader(feeds: list[dict[str, np.ndarray]]):
    """The feeds as onnxruntime's quantization tools read calibration data (a CalibrationDataReader, once through)."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return FeedReader()


def image_feeds(images: np.ndarray, input_name: str = "pixel_values") -> list[dict[str, np.ndarray]]:
    """Batch-1 float32 feeds, one per image (images: [N, ...])."""
    images = np.asarray(images, dtype=np.float32)
    return [{input_name: np.ascontiguousarray(images[i : i + 1])} for i in range(len(images))]


def model_input_dims(onnx_path: str | Path) -> dict[str, list[int | None]]:
    """{input: dims} of the graph's real inputs, None for a symbolic dim (older exports also list
    initializers as inputs: those are skipped)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in graph.input if i.name not in initializers}


def model_input_names(onnx_path: str | Path) -> list[str]:
    return list(model_input_dims(onnx_path))
