"""Turn splits into model inputs: tokenise once, then batch with dynamic padding.

Dynamic padding (pad each batch to its longest member, not to max_length) makes training on
short SST-2 phrases several times faster on a CPU than padding to 128.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .loading import Split


@dataclass
class Encoded:
    """A split in model-ready form: token id lists (text) or an image array, plus labels."""

    labels: np.ndarray
    ids: list[list[int]] | None = None
    images: np.ndarray | None = None
    pad_id: int = 0
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Encoded":
        """The first `n` examples (all when None)."""
        return Encoded(self.labels[:n], ids=None if self.ids is None else self.ids[:n],
                       images=None if self.images is None else self.images[:n], pad_id=self.pad_id,
                       truncated=self.truncated)

    @property
    def lengths(self) -> np.ndarray | None:
        """Tokens per text (None for images)."""
        return None if self.ids is None else np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        if self.images is not None:
            return {"pixel_values": torch.from_numpy(self.images[idx])}
        seqs = [self.ids[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def encode(split: Split, tokenizer=None, max_length: int = 128, warn: bool = True) -> Encoded:
    """warn: say how many texts were truncated (a run decides itself when to say it: warn_truncated)."""
    if split.images is not None:
        return Encoded(split.labels, images=split.images)
    full = tokenizer(split.texts, add_special_tokens=True, truncation=False)["input_ids"]
    truncated = sum(len(x) > max_length for x in full)
    if truncated and warn:
        warn_truncated(truncated, len(full), split.name, max_length, stacklevel=2)  # where encode was called
    ids = [x if len(x) <= max_length else x[: max_length - 1] + [x[-1]] for x in full]  # keep [SEP]
    return Encoded(split.labels, ids=ids, pad_id=tokenizer.pad_token_id or 0, truncated=truncated)


def warn_truncated(truncated: int, total: int, split: str, max_length: int, stacklevel: int = 1) -> None:
    """stacklevel 1: the warning names the function that calls this one."""
    warnings.warn(f"{truncated} of {total} texts in the {split} split are longer than data.max_length={max_length} "
                  "tokens and were truncated.", stacklevel=stacklevel + 1)


def batch_indices(n: int, batch_size: int, shuffle: bool, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    order = rng.permutation(n) if shuffle else np.arange(n)
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


# Examples in a length bucket: large enough that batches still mix many texts of a kind, small enough
# that the longest text of a batch is close to its shortest (measured on SST-2 train, batch 32:
# padding falls from 67% of the tokens with random batches to 4.5%).
BUCKET_BATCHES = 50


def bucketed_batches(lengths: np.ndarray | None, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of examples of similar length (less padding), in shuffled order.

    Shuffle, cut into buckets of BUCKET_BATCHES batches, sort each bucket by length, cut it into
    batches, shuffle the batches. Depends only on (lengths, batch_size, rng): every process of a
    distributed run, and a resumed run, builds the same list. Images (lengths None): plain shuffle.
    """
    n = len(lengths) if lengths is not None else 0
    if lengths is None:
        raise ValueError("bucketed_batches needs lengths; use batch_indices for images")
    order = rng.permutation(n)
    size = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, n, size):
        bucket = order[start: start + size]
        bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
        batches += [bucket[i: i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
